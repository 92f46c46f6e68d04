//! Waiting for an HTTP endpoint to answer 200 (a server just started, in a process or a
//! container), over a plain socket so that it works before any client is set up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `GET path` until it answers 200.
pub fn wait_http_ok(addr: SocketAddr, path: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n"
            );
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("no 200 from http://{addr}{path} within {within:?}")
}
