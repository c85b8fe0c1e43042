//! Load generator for `scripts/bench.py --loadgen`: publishes N paced RTMP streams from
//! one process, so the bench can drive hundreds of streams on a 2-core box (an ffmpeg
//! publisher per stream costs more CPU than the recorder does).
//!
//! Usage: `cargo bench --bench publish_load -- RTMP_ADDR APP PREFIX N CLIP.flv SECONDS`
//!
//! Each stream loops the clip in real time (timestamps continue across loops), sending on
//! a 20 ms tick every tag that is due, through the crate's sans-IO `ClientSession`; what
//! the server sends back is read and dropped. Streams start 10 ms apart. Prints one line
//! per stream that failed and a summary; exits non-zero if any failed.

#[path = "../tests/support/flv.rs"]
#[allow(dead_code)]
mod flv;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgerec::proto::rtmp::ClientSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;

const TICK: Duration = Duration::from_millis(20);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [addr, app, prefix, n, clip, seconds] = &args[..] else {
        eprintln!("usage: publish_load RTMP_ADDR APP PREFIX N CLIP.flv SECONDS");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N");
    let seconds: u64 = seconds.parse().expect("SECONDS");
    let tags: Vec<flv::Tag> = flv::read_tags(Path::new(clip))
        .into_iter()
        .filter(|t| t.kind == 8 || t.kind == 9)
        .collect();
    let tags = Arc::new(tags);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let failed = runtime.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let (addr, app, key, tags) = (
                addr.clone(),
                app.clone(),
                format!("{prefix}{i}"),
                tags.clone(),
            );
            set.spawn(async move {
                let r = publish(&addr, &app, &key, &tags, Duration::from_secs(seconds)).await;
                r.map_err(|e| format!("{key}: {e}"))
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut failed = 0;
        while let Some(done) = set.join_next().await {
            if let Ok(Err(e)) | Err(e) = done.map_err(|e| e.to_string()) {
                eprintln!("publish_load: {e}");
                failed += 1;
            }
        }
        failed
    });
    println!("publish_load: {n} streams for {seconds} s, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

async fn write(
    sock: &mut tokio::net::tcp::OwnedWriteHalf,
    s: &mut ClientSession,
) -> std::io::Result<()> {
    let out = s.take_output();
    sock.write_all(&out).await
}

/// Reads and feeds `s` until `done` says so (the handshake and the publish's replies).
async fn until(
    sock: &mut OwnedReadHalf,
    s: &mut ClientSession,
    done: impl Fn(&ClientSession) -> bool,
) -> Result<(), String> {
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(s) {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut buf))
            .await
            .map_err(|_| "no reply within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the server".into());
        }
        s.feed(&buf[..n]).map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

async fn publish(
    addr: &str,
    app: &str,
    key: &str,
    tags: &[flv::Tag],
    length: Duration,
) -> Result<(), String> {
    let sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let mut s = ClientSession::new();
    s.handshake_c0c1();
    write(&mut wr, &mut s).await.map_err(|e| e.to_string())?;
    until(&mut rd, &mut s, |s| s.s1().is_some()).await?;
    let s1 = s.s1().map(<[u8]>::to_vec).unwrap_or_default();
    s.handshake_c2(&s1);
    s.connect(app, &format!("rtmp://{addr}/{app}"), false);
    s.create_stream();
    write(&mut wr, &mut s).await.map_err(|e| e.to_string())?;
    until(&mut rd, &mut s, |s| s.created_stream_id().is_some()).await?;
    let id = s.created_stream_id().unwrap_or(1);
    s.publish(id, key);
    write(&mut wr, &mut s).await.map_err(|e| e.to_string())?;
    until(&mut rd, &mut s, |s| {
        s.status_codes()
            .iter()
            .any(|c| c.starts_with("NetStream.Publish."))
    })
    .await?;
    if !s
        .status_codes()
        .iter()
        .any(|c| c == "NetStream.Publish.Start")
    {
        return Err(format!("refused: {:?}", s.status_codes()));
    }
    // The server's acknowledgements and pings: read and dropped.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let clip_ms = tags.last().map_or(0, |t| t.timestamp) + 40;
    let start = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    let (mut next, mut base) = (0usize, 0u32);
    let result = loop {
        ticks.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= length {
            break Ok(());
        }
        let now_ms = elapsed.as_millis() as u32;
        while let Some(tag) = tags.get(next).filter(|t| base + t.timestamp <= now_ms) {
            let ts = base + tag.timestamp;
            match tag.kind {
                8 => s.audio(id, ts, &tag.body),
                _ => s.video(id, ts, &tag.body),
            }
            next += 1;
            if next == tags.len() {
                next = 0;
                base += clip_ms;
            }
        }
        if let Err(e) = write(&mut wr, &mut s).await {
            break Err(format!("dropped after {:.1} s: {e}", elapsed.as_secs_f64()));
        }
    };
    s.delete_stream(id);
    let _ = write(&mut wr, &mut s).await;
    reader.abort();
    result
}
