//! A blocking socket wrapper around the crate's sans-IO `ClientSession`, for tests that
//! craft what encoders normally would not send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use edgerec::proto::rtmp::ClientSession;

pub struct RawClient {
    pub sock: TcpStream,
    pub session: ClientSession,
}

impl RawClient {
    pub fn connect(addr: &str) -> RawClient {
        RawClient::over(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects to `addr` from the local address `from` (any of 127.0.0.0/8 on Linux), as
    /// a second host on the venue LAN would.
    pub fn connect_from(addr: &str, from: std::net::Ipv4Addr) -> RawClient {
        RawClient::over(super::connect_from(addr, from))
    }

    fn over(sock: TcpStream) -> RawClient {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        RawClient {
            sock,
            session: ClientSession::new(),
        }
    }

    /// Sends whatever the session has queued. Errors (the server closed) are returned.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let out = self.session.take_output();
        self.sock.write_all(&out)
    }

    /// Reads replies until `done` holds or `limit` passes. False on timeout or close.
    pub fn pump(&mut self, limit: Duration, mut done: impl FnMut(&ClientSession) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 16384];
        while Instant::now() < deadline {
            if done(&self.session) {
                return true;
            }
            match self.sock.read(&mut buf) {
                Ok(0) => return done(&self.session),
                Ok(n) => {
                    if self.session.feed(&buf[..n]).is_err() {
                        return false;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return done(&self.session),
            }
        }
        done(&self.session)
    }

    pub fn handshake(&mut self) {
        self.session.handshake_c0c1();
        self.flush().expect("send C0C1");
        assert!(
            self.pump(Duration::from_secs(5), |s| s.s1().is_some()),
            "no S1 from server"
        );
        let s1 = self.session.s1().expect("s1").to_vec();
        self.session.handshake_c2(&s1);
        self.flush().expect("send C2");
    }

    /// connect + createStream + publish; returns (stream id, status codes seen).
    pub fn publish(&mut self, app: &str, key: &str, enhanced: bool) -> (u32, Vec<String>) {
        self.handshake();
        self.session
            .connect(app, &format!("rtmp://127.0.0.1/{app}"), enhanced);
        self.session.create_stream();
        self.flush().expect("send connect");
        assert!(
            self.pump(Duration::from_secs(5), |s| s.created_stream_id().is_some()),
            "no createStream result"
        );
        let id = self.session.created_stream_id().unwrap();
        self.session.publish(id, key);
        self.flush().expect("send publish");
        self.pump(Duration::from_secs(10), |s| {
            s.status_codes()
                .iter()
                .any(|c| c.starts_with("NetStream.Publish."))
        });
        (id, self.session.status_codes())
    }

    /// Whether the server has closed the connection (EOF or reset) within `limit`.
    pub fn closed_by_server(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}
