//! Receive low-water mark for publish sockets: the kernel wakes the event loop only once
//! [`PUBLISH_LOW_WATER`] bytes are queued, instead of once per encoder write (a publisher
//! writes each audio and video frame on its own, ~70 writes a second for 2 Mb/s with AAC).
//! What is queued below the mark is read by [`recv_queued`] when the connection's drain
//! timer fires, so no byte waits longer than [`PUBLISH_DRAIN`].
//!
//! Hand-written because neither nix, socket2 nor rustix exposes `SO_RCVLOWAT`; its `unsafe` is
//! one `setsockopt` call on a descriptor the caller borrows (the crate's other is `memory`).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{recv, MsgFlags};
use tokio::net::TcpStream;

/// Bytes queued before the kernel reports a publish socket readable (about 1/4 s of a
/// 2 Mb/s stream, so ~4 wakeups a second). Half the default receive buffer (`tcp_rmem`
/// 128 KiB): up to there setting the mark leaves the buffer and the TCP window clamp as
/// they are; a bigger mark makes Linux grow the buffer and clamp the window to the mark.
/// The kernel still wakes the reader early when the advertised window runs out, so a
/// publisher is never stalled waiting for the mark.
pub const PUBLISH_LOW_WATER: usize = 64 * 1024;
/// Longest a byte below the low-water mark waits before it is read. Longer than the time
/// a 2 Mb/s stream takes to reach the mark, so the drain timer fires only for slower
/// streams (audio-only, low bitrate), a stream's end and a silent publisher.
pub const PUBLISH_DRAIN: Duration = Duration::from_millis(500);

/// Sets `SO_RCVLOWAT` (1 is the kernel default: readable as soon as one byte is queued).
/// Linux caps the value at half the receive buffer and still reports readable early under
/// memory pressure, at end of stream and on errors, so a large mark cannot stall a socket.
pub fn set_recv_low_water(socket: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is open for as long as `socket` is borrowed, and the option
    // value is a c_int on the stack whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads whatever is queued, even below the low-water mark, without waiting: Ok(0) is end
/// of stream, `WouldBlock` means nothing is queued. Bypasses tokio's readiness cache, which
/// stays "not readable" while the queue is under the mark.
pub fn recv_queued(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    recv(socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn bytes_below_the_mark_wait_for_a_drain_and_lose_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        set_recv_low_water(&server, 4096).unwrap();
        // tokio takes a fresh socket to be readable until a read says otherwise.
        let mut buf = [0u8; 8192];
        let err = server.try_read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        client.write_all(&[7u8; 100]).await.unwrap();
        // Below the mark: the kernel does not report the socket readable...
        let ready = tokio::time::timeout(Duration::from_millis(300), server.readable()).await;
        assert!(ready.is_err(), "100 bytes must not wake a 4096-byte mark");
        // ...yet the bytes are queued and a drain reads all of them.
        assert_eq!(recv_queued(&server, &mut buf).unwrap(), 100);
        assert!(buf[..100].iter().all(|b| *b == 7));
        let err = recv_queued(&server, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Reaching the mark wakes the socket.
        client.write_all(&[9u8; 5000]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.readable())
            .await
            .expect("5000 queued bytes must reach a 4096-byte mark")
            .unwrap();
        // End of stream is reported whatever the mark. `recv_queued` bypasses tokio's
        // readiness, so `readable()` may still answer from the 5000 bytes: poll the
        // socket itself until the FIN is there (slow under qemu).
        let mut got = 0;
        while got < 5000 {
            got += read_when_queued(&server, &mut buf).await;
        }
        assert_eq!(got, 5000);
        drop(client);
        assert_eq!(
            read_when_queued(&server, &mut buf).await,
            0,
            "end of stream"
        );
    }

    /// `recv_queued`, retried while it would block, for at most 5 s.
    async fn read_when_queued(socket: &TcpStream, buf: &mut [u8]) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match recv_queued(socket, buf) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "nothing queued in 5 s"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    fn int_option(socket: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int-sized option read into a c_int on the stack, its size passed.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        value
    }

    #[tokio::test]
    async fn the_publish_mark_leaves_the_receive_window_alone() {
        // Holds where the default receive buffer is at least twice the mark (Linux's
        // default `tcp_rmem` is 128 KiB); a box tuned lower gets a clamped window.
        let rmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem").unwrap_or_default();
        let default_rcvbuf: usize = rmem
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if default_rcvbuf < 2 * PUBLISH_LOW_WATER {
            eprintln!("skipped: tcp_rmem default {default_rcvbuf} < 2 x {PUBLISH_LOW_WATER}");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let buffer = int_option(&server, libc::SOL_SOCKET, libc::SO_RCVBUF);
        let clamp = int_option(&server, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP);
        set_recv_low_water(&server, PUBLISH_LOW_WATER).unwrap();
        assert_eq!(
            int_option(&server, libc::SOL_SOCKET, libc::SO_RCVLOWAT),
            PUBLISH_LOW_WATER as libc::c_int
        );
        assert_eq!(
            int_option(&server, libc::SOL_SOCKET, libc::SO_RCVBUF),
            buffer
        );
        assert_eq!(
            int_option(&server, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP),
            clamp,
            "the mark must not clamp the TCP window"
        );
    }
}
