//! The `edgerec` command line: `run` (the daemon), `check-config`, `fsck` and `sign-url`.
//! Only parses arguments, sets up logging and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use edgerec::config::Config;
use edgerec::storage::{fsck, Storage};

#[derive(Parser)]
#[command(
    name = "edgerec",
    version,
    about = "Venue recorder: RTMP in, crash-safe HLS recordings on flash"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the recorder (with no -c: the embedded default, recording to ./edgerec-data).
    Run {
        /// Config file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Overrides data_dir.
        #[arg(short = 'd', long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a config file and list every problem with its key and allowed range.
    CheckConfig { file: PathBuf },
    /// Print a signed publish URL (txSecret/txTime) for an encoder, from [publish_auth].
    SignUrl {
        /// The app (e.g. live).
        #[arg(long)]
        app: String,
        /// The stream name.
        #[arg(long)]
        stream: String,
        /// How long the URL may start publishes: 90s, 30m, 24h, 7d (default 24h).
        #[arg(long, default_value = "24h")]
        expires: String,
        /// Config file (default /etc/edgerec/edgerec.toml).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Host[:port] encoders reach the box at (default: this machine's name and the
        /// configured RTMP or RTMPS port).
        #[arg(long)]
        host: Option<String>,
        /// An rtmps:// URL (needs [rtmps]).
        #[arg(long)]
        rtmps: bool,
    },
    /// Check the index against the media files (stop the daemon first).
    Fsck {
        /// Data dir (default: the config's, or ./edgerec-data).
        #[arg(short = 'd', long)]
        data_dir: Option<PathBuf>,
        /// Config file, for data_dir and the resume window.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Fix what is found (adopt, mark gaps, close, remove orphans).
        #[arg(long)]
        repair: bool,
    },
}

fn load(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> Result<Config, String> {
    let mut c = match config {
        Some(path) => {
            let c = Config::load(&path).map_err(|e| e.to_string())?;
            if let Some(w) = readable_secrets(&path, &c) {
                tracing::warn!("{w}");
            }
            c
        }
        None => Config::default(),
    };
    if let Some(d) = data_dir {
        c.data_dir = d;
    }
    Ok(c)
}

/// `RUST_LOG` as a list of `level` and `target=level` (what operators use); a `Targets`
/// filter rather than `EnvFilter`, whose span and field directives nobody uses here and
/// whose regex engine cost the ARM binary about 0.5 MB.
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    const DEFAULT: &str = "info,sled=warn";
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (DEFAULT.parse().expect("default filter"), Some((v, e))),
        },
        Err(_) => (DEFAULT.parse().expect("default filter"), None),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    if let Some((value, e)) = bad {
        tracing::warn!(RUST_LOG = %value, error = %e, "RUST_LOG not understood; logging at {DEFAULT}");
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config, data_dir } => with_config(config, data_dir, run_daemon),
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                for w in c.warnings() {
                    println!("warning: {w}");
                }
                if let Some(w) = readable_secrets(&file, &c) {
                    println!("warning: {w}");
                }
                // The certificates too, as the daemon will load them at start.
                let mut pairs = vec![];
                if let (Some(cert), Some(key)) = (&c.http.cert_file, &c.http.key_file) {
                    pairs.push((cert, key));
                }
                if let Some(r) = &c.rtmps {
                    if let (Some(cert), Some(key)) = (&r.cert_file, &r.key_file) {
                        pairs.push((cert, key));
                    }
                }
                for (cert, key) in pairs {
                    if let Err(e) = edgerec::tls::load(cert, key, &[]) {
                        eprintln!("{}: {e}", file.display());
                        return ExitCode::from(2);
                    }
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Fsck {
            data_dir,
            config,
            repair,
        } => with_config(config, data_dir, |c| run_fsck(&c, repair)),
        Command::SignUrl {
            app,
            stream,
            expires,
            config,
            host,
            rtmps,
        } => sign_url(&app, &stream, &expires, config, host, rtmps),
    }
}

/// A warning when `path` holds secrets and every user of the box may read it.
fn readable_secrets(path: &std::path::Path, c: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (c.holds_secrets() && mode & 0o004 != 0).then(|| {
        format!(
            "{} holds keys or credentials and is readable by every user (mode {:o}): \
             chmod 640 and chgrp edgerec",
            path.display(),
            mode & 0o777
        )
    })
}

/// `edgerec sign-url`: the URL on stdout (for scripts), its expiry on stderr.
fn sign_url(
    app: &str,
    stream: &str,
    expires: &str,
    config: Option<PathBuf>,
    host: Option<String>,
    rtmps: bool,
) -> ExitCode {
    let path = config.unwrap_or_else(|| PathBuf::from("/etc/edgerec/edgerec.toml"));
    let c = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgerec sign-url: {e}");
            return ExitCode::from(2);
        }
    };
    for (what, name) in [("app", app), ("stream", stream)] {
        if let Err(e) = edgerec::storage::validate_name(name) {
            eprintln!("edgerec sign-url: bad {what} name {name:?}: {e}");
            return ExitCode::from(2);
        }
    }
    let Some(auth) = c.publish_auth.for_app(app) else {
        eprintln!(
            "edgerec sign-url: {} has no [publish_auth] covering app {app:?}: publishing there \
             needs no signature",
            path.display()
        );
        return ExitCode::from(2);
    };
    let Some(valid_s) = parse_duration_s(expires) else {
        eprintln!(
            "edgerec sign-url: --expires {expires:?}: give a number with s, m, h or d (e.g. 24h)"
        );
        return ExitCode::from(2);
    };
    let now_s = edgerec::clock::now_ms() / 1000;
    let until = now_s as u64 + valid_s;
    let (scheme, listen, default_port) = match (&c.rtmps, rtmps) {
        (_, false) => ("rtmp", c.rtmp.listen, 1935),
        (Some(r), true) => ("rtmps", r.listen, 443),
        (None, true) => {
            eprintln!(
                "edgerec sign-url: --rtmps: {} has no [rtmps] section",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    let host = host.unwrap_or_else(|| {
        let ip = listen.ip();
        let name = if ip.is_unspecified() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        } else {
            ip.to_string()
        };
        match listen.port() {
            port if port == default_port => name,
            port => format!("{name}:{port}"),
        }
    });
    let query = edgerec::auth::publish::signed_query(&auth.key.0, stream, until);
    println!("{scheme}://{host}/{app}/{stream}?{query}");
    eprintln!(
        "valid until {} (txTime is the expiry; publishes must start before it)",
        edgerec::clock::rfc3339(until as i64 * 1000)
    );
    ExitCode::SUCCESS
}

/// `90s`, `30m`, `24h`, `7d` or plain seconds; at most ten years.
fn parse_duration_s(text: &str) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let n: u64 = number.trim().parse().ok()?;
    let s = n.checked_mul(match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    })?;
    (1..=10 * 365 * 86_400).contains(&s).then_some(s)
}

/// Sets up logging, loads the config (exit 2 when it is invalid) and runs `f` with it.
fn with_config(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    f: impl FnOnce(Config) -> ExitCode,
) -> ExitCode {
    init_logging();
    match load(config, data_dir) {
        Ok(c) => f(c),
        Err(e) => {
            eprintln!("edgerec: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_daemon(config: Config) -> ExitCode {
    // One event-loop thread: the network side of dozens of streams needs a small share
    // of one core, and a second worker mostly adds cross-thread wake-ups (measured:
    // scripts/bench.py). Disk work runs on the per-stream writer threads and the blocking
    // pool.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        // Bounded, so the unit's TasksMax holds (tokio's default is 512); more blocking
        // work waits its turn.
        .max_blocking_threads(edgerec::system::BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgerec: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(shutdown_on_signal(cancel.clone()));
        edgerec::daemon::run(config, cancel).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgerec: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_fsck(config: &Config, repair: bool) -> ExitCode {
    let index = match edgerec::daemon::open_index(config) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("edgerec fsck: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let storage = Storage::new(config.media_dir());
    let findings = match fsck::check(&index, &storage) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("edgerec fsck: {e}");
            return ExitCode::FAILURE;
        }
    };
    for f in &findings {
        println!("{f}");
    }
    println!("{} finding(s)", findings.len());
    if findings.is_empty() {
        return ExitCode::SUCCESS;
    }
    if !repair {
        println!("run with --repair to fix");
        return ExitCode::from(1);
    }
    let now = edgerec::clock::now_ms();
    match fsck::repair(&index, &storage, config.record.resume_window(), now) {
        Ok(report) => {
            println!(
                "repaired: {}",
                serde_json::to_string(&report).unwrap_or_default()
            );
            match fsck::check(&index, &storage) {
                Ok(left) if left.is_empty() => ExitCode::SUCCESS,
                Ok(left) => {
                    for f in &left {
                        println!("still: {f}");
                    }
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("edgerec fsck: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("edgerec fsck --repair: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    cancel.cancel();
}
