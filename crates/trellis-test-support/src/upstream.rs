//! An HTTP/1.1 upstream that answers every request only after holding it for a while, and
//! tells the test when a request has arrived: for draining and timeout tests, where the test
//! must know that a request is in flight.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

/// See the module docs. Each request gets `200 OK` with the body `held` after `hold`.
#[derive(Debug)]
pub struct HeldUpstream {
    pub addr: SocketAddr,
    arrived: Receiver<String>,
    stop: Arc<AtomicBool>,
}

impl HeldUpstream {
    pub fn start(hold: Duration) -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local addr of a bound listener");
        let (tx, arrived) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    let tx = tx.clone();
                    std::thread::spawn(move || serve(stream, hold, &tx));
                }
            }
        });
        HeldUpstream {
            addr,
            arrived,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Waits up to `timeout` for the next request to arrive; returns its head.
    pub fn wait_request(&self, timeout: Duration) -> Option<String> {
        self.arrived.recv_timeout(timeout).ok()
    }
}

impl Drop for HeldUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, hold: Duration, arrived: &Sender<String>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let _ = arrived.send(String::from_utf8_lossy(&head).into_owned());
    // The point of this server: it is slow.
    std::thread::sleep(hold);
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld");
}
