//! A gigabyte each way through A → B → app, streamed: the client generates and hashes the
//! upload while sending and checks the download while receiving; the proxies' peak memory
//! shows they never held the body.

use trellis_test_support::client::{download_pattern, upload_generated};

use crate::web_chain;

const GIB: u64 = 1 << 30;

/// Peak RSS a proxy may reach while relaying a gigabyte: far below the body's size.
const MAX_PROXY_PEAK_KIB: u64 = 256 * 1024;

#[tokio::test]
async fn upload_1gib_streams_through_chain_with_matching_checksum() {
    let web = web_chain();
    let chain = &web.chain;
    let upload = upload_generated(chain.a.outbound(), "http://web.test/sha256", GIB)
        .await
        .unwrap_or_else(|e| panic!("upload failed: {e:#}\n{}", chain.diagnostics()));
    eprintln!("1 GiB upload through the chain took {:?}", upload.elapsed);
    assert_eq!(
        upload.status,
        200,
        "{:?}\n{}",
        upload.body,
        chain.diagnostics()
    );
    let json: serde_json::Value =
        serde_json::from_slice(&upload.body).unwrap_or_else(|e| panic!("{e}: {:?}", upload.body));
    assert_eq!(upload.sent_bytes, GIB);
    assert_eq!(json["bytes"], GIB, "bytes the app received: {json}");
    assert_eq!(
        json["sha256"],
        upload.sent_sha256.as_str(),
        "checksum at the app vs at the client: {json}"
    );
    check_peak_memory(&web);
}

#[tokio::test]
async fn download_1gib_streams_through_chain_byte_for_byte() {
    let web = web_chain();
    let chain = &web.chain;
    let url = format!("http://web.test/bytes/{GIB}");
    let download = download_pattern(chain.a.outbound(), &url, GIB)
        .await
        .unwrap_or_else(|e| panic!("download failed: {e:#}\n{}", chain.diagnostics()));
    eprintln!(
        "1 GiB download through the chain took {:?}",
        download.elapsed
    );
    assert_eq!(download.status, 200, "{}", chain.diagnostics());
    assert_eq!(
        download.content_length,
        Some(GIB),
        "content-length survives the chain"
    );
    assert_eq!(download.received, GIB);
    check_peak_memory(&web);
}

fn check_peak_memory(web: &crate::Web) {
    for proxy in [&web.chain.a, &web.chain.b] {
        let peak = proxy.peak_rss_kib().expect("VmHWM of a running proxy");
        eprintln!("{} peak RSS {} MiB", proxy.name(), peak / 1024);
        assert!(
            peak < MAX_PROXY_PEAK_KIB,
            "{} peaked at {} MiB relaying 1 GiB: the body was buffered",
            proxy.name(),
            peak / 1024
        );
    }
    if let Some(peak) = web.app.process().peak_rss_kib() {
        eprintln!("demo app peak RSS {} MiB", peak / 1024);
    }
}
