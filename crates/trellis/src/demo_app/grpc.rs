//! The demo app's gRPC service, `trellis.demo.v1.Demo`, served on the HTTP port: requests with
//! `content-type: application/grpc*` come here from [`super::routes::handle`]; everything else
//! stays with the HTTP routes. The generated `DemoServer` is a tower service, called once per
//! request (no tonic server, no router).

use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tonic::Status;
use tower::Service as _;
use trellis_api::demo::v1::demo_server::{Demo, DemoServer};
use trellis_api::demo::v1::{EchoReply, EchoRequest, InfoReply, InfoRequest};

use super::Service;
use super::routes::{Body, BoxError};

/// `trellis.demo.v1.Demo` for one app.
struct DemoService(Arc<Service>);

/// gRPC is HTTP/2 with a `content-type` of `application/grpc` (or `application/grpc+proto`, ...).
pub(super) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Serve one gRPC request. Never fails: tonic answers every problem (unknown method, bad
/// message) with a gRPC status.
pub(super) async fn serve(service: Arc<Service>, req: Request<Incoming>) -> Response<Body> {
    let mut server = DemoServer::new(DemoService(service));
    match server.call(req).await {
        Ok(response) => response.map(|body| body.map_err(BoxError::from).boxed_unsync()),
        Err(never) => match never {},
    }
}

#[tonic::async_trait]
impl Demo for DemoService {
    async fn info(
        &self,
        _request: tonic::Request<InfoRequest>,
    ) -> Result<tonic::Response<InfoReply>, Status> {
        let report = self.0.report().await;
        Ok(tonic::Response::new(InfoReply::from(&report)))
    }

    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        Ok(tonic::Response::new(EchoReply {
            message: request.into_inner().message,
            service: self.0.name.to_string(),
            version: self.0.version.to_string(),
        }))
    }
}
