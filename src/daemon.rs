//! Wiring of the running daemon: open the index, run startup recovery, bind the
//! listeners, start ingest, the API and the resume-window reaper, and on shutdown seal
//! every open segment before exiting. `main.rs` only parses the CLI and calls [`run`].
//! Also loads the RTMPS and HTTPS certificates (a bad one stops the start) and reloads
//! them on SIGHUP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::index::Index;
use crate::notify;
use crate::record::catalog::Catalog;
use crate::record::{self, Recorders};
use crate::storage::{recovery, retention, Storage};
use crate::system;
use crate::tls::{self, ServerTls};
use crate::upload::Uploader;

/// Opens the index (a lock held by another edgerec is reported as such by [`Index::open`]).
pub fn open_index(config: &Config) -> anyhow::Result<Index> {
    let dir = config.index_dir();
    Index::open(&dir).with_context(|| format!("cannot open the index in {}", dir.display()))
}

/// The certificates of the listeners that speak TLS.
struct Certificates {
    rtmps: Option<Arc<ServerTls>>,
    https: Option<Arc<ServerTls>>,
}

/// Loads the configured certificates, generating the self-signed RTMPS one in
/// `DATA_DIR/tls` when `[rtmps]` names none. Any problem stops the start.
fn load_certificates(config: &Config) -> anyhow::Result<Certificates> {
    let https = match (&config.http.cert_file, &config.http.key_file) {
        (Some(cert), Some(key)) => {
            let (tls, sha256) =
                ServerTls::load("https", cert.clone(), key.clone(), vec![b"http/1.1"])
                    .context("cannot use the HTTPS certificate")?;
            tracing::info!(file = %cert.display(), %sha256, "https certificate loaded");
            Some(Arc::new(tls))
        }
        _ => None,
    };
    let rtmps = match &config.rtmps {
        Some(r) => {
            let (cert, key, self_signed) = match (&r.cert_file, &r.key_file) {
                (Some(cert), Some(key)) => (cert.clone(), key.clone(), false),
                _ => {
                    let (cert, key, made) = tls::self_signed(&config.tls_dir())
                        .context("cannot make the self-signed RTMPS certificate")?;
                    if made {
                        tracing::warn!(file = %cert.display(), "generated a self-signed RTMPS certificate (no [rtmps] cert_file)");
                    }
                    (cert, key, true)
                }
            };
            let (tls, sha256) = ServerTls::load("rtmps", cert.clone(), key, Vec::new())
                .context("cannot use the RTMPS certificate")?;
            if self_signed {
                tracing::info!(file = %cert.display(), %sha256, "rtmps uses a self-signed certificate: pin this SHA-256 fingerprint in the encoder");
            } else {
                tracing::info!(file = %cert.display(), %sha256, "rtmps certificate loaded");
            }
            Some(Arc::new(tls))
        }
        None => None,
    };
    Ok(Certificates { rtmps, https })
}

/// Runs the recorder until `cancel`. Prints one `edgerec: listening rtmp=ADDR http=ADDR`
/// line (with ` rtmps=ADDR` and ` rtsp=ADDR` appended when RTMPS / RTSP are on; `http=` is the API's address over
/// HTTP or HTTPS) on stdout once it accepts publishes (tools and tests read the bound
/// ports there).
pub async fn run(config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    for w in config.warnings() {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    crate::memory::tune();
    let media_dir = config.media_dir();
    std::fs::create_dir_all(&media_dir)
        .with_context(|| format!("cannot create the media folder {}", media_dir.display()))?;
    let certificates = load_certificates(&config)?;
    let index = open_index(&config)?;
    if config.callback.enabled() && config.callback.status_events {
        // Before recovery: a recording it pauses or ends is told too.
        index.send_status_events(config.callback.clone());
    }
    let storage = Storage::new(media_dir);

    let started = std::time::Instant::now();
    let (idx, st, window) = (
        index.clone(),
        storage.clone(),
        config.record.resume_window(),
    );
    let report = tokio::task::spawn_blocking(move || {
        recovery::recover(&idx, &st, window, crate::clock::now_ms())
    })
    .await
    .context("recovery task")?
    .context("startup recovery failed")?;
    if report.changed_anything() {
        tracing::warn!(
            ?report,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered after an unclean stop"
        );
    } else {
        tracing::info!(
            recordings = report.recordings_checked,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index and files agree"
        );
    }

    let rtmp = tokio::net::TcpListener::bind(config.rtmp.listen)
        .await
        .with_context(|| format!("cannot listen for RTMP on {}", config.rtmp.listen))?;
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.listen))?;
    let (rtmp_addr, http_addr) = (rtmp.local_addr()?, http.local_addr()?);
    let rtmps = match (&config.rtmps, &certificates.rtmps) {
        (Some(r), Some(tls)) => {
            let listener = tokio::net::TcpListener::bind(r.listen)
                .await
                .with_context(|| format!("cannot listen for RTMPS on {}", r.listen))?;
            Some(crate::ingest::rtmp::RtmpsListener {
                listener,
                tls: tls.clone(),
            })
        }
        _ => None,
    };
    let rtmps_addr = match &rtmps {
        Some(r) => Some(r.listener.local_addr()?),
        None => None,
    };
    let rtsp = match config.rtsp.listen_addr() {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for RTSP on {addr}"))?,
        ),
        None => None,
    };
    let rtsp_addr = match &rtsp {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    let catalog = Catalog::load(
        &index,
        &config.templates,
        &config.rules,
        config.record.flow_continue_duration_s,
    )
    .context("loading the templates and rules made over the API")?;
    let recorders = Recorders::new(
        index.clone(),
        storage.clone(),
        config.record.clone(),
        catalog,
    );
    let callbacks_due = Arc::new(tokio::sync::Notify::new());
    let uploader = if config.upload.enabled {
        let uploader = Uploader::new(
            index.clone(),
            storage.clone(),
            &config,
            callbacks_due.clone(),
        )
        .map_err(|e| anyhow::anyhow!("cannot set up uploads: {e}"))?;
        tracing::info!(endpoint = %config.upload.s3.endpoint, bucket = %config.upload.s3.bucket, concurrency = config.upload.concurrency, "uploads enabled");
        Some(uploader)
    } else {
        None
    };
    let config = Arc::new(config);
    let ingest_cancel = cancel.child_token();
    let sources = crate::ingest::camera::Sources::start(
        &config.sources,
        index.clone(),
        recorders.clone(),
        Arc::new(crate::ingest::camera::RetinaConnector::default()),
        ingest_cancel.clone(),
    );
    let tasks = record::tasks::Tasks::new(recorders.clone());
    let api_state = ApiState {
        sources: sources.clone(),
        index: index.clone(),
        storage: storage.clone(),
        recorders: recorders.clone(),
        config: config.clone(),
        uploader: uploader.clone(),
        plans: api::PlanCache::default(),
        access: api::Access::new(&config.http),
        tasks: tasks.clone(),
    };
    // Background work that stops with the daemon; in-flight uploads resume at next start.
    let background = CancellationToken::new();
    let mut workers = Vec::new();
    if let Some(uploader) = uploader {
        workers.push(tokio::spawn(uploader.run(background.clone())));
    }
    if config.callback.enabled() {
        workers.push(tokio::spawn(notify::run(
            index.clone(),
            config.callback.clone(),
            callbacks_due,
            background.clone(),
        )));
    }
    let policy = retention::Policy {
        storage: config.storage.clone(),
        keep_local: config.upload.enabled.then(|| config.upload.keep_local()),
    };
    workers.push(tokio::spawn(retention::run(
        index.clone(),
        storage.clone(),
        policy,
        recorders.disk_state(),
        background.clone(),
    )));
    let ingest = tokio::spawn(crate::ingest::rtmp::run(
        rtmp,
        rtmps,
        config.rtmp.clone(),
        crate::ingest::admission::PublishGate::new(config.publish_auth.clone()),
        recorders.clone(),
        ingest_cancel.clone(),
    ));
    let rtsp_ingest = rtsp.map(|listener| {
        tokio::spawn(crate::ingest::rtsp::run(
            listener,
            config.rtsp.clone(),
            crate::ingest::admission::PublishGate::new(config.publish_auth.clone()),
            recorders.clone(),
            ingest_cancel.clone(),
        ))
    });
    let api_cancel = CancellationToken::new();
    let uploader_for_health = api_state.uploader.clone();
    let api = api::ApiServer::spawn(
        http,
        certificates.https.clone(),
        api_state,
        api_cancel.clone(),
    )
    .context("start the API thread")?;
    // Always installed, so a stray SIGHUP never kills the recorder (its default action).
    let reloads = [certificates.rtmps, certificates.https];
    workers.push(tokio::spawn(tls::reload_on_sighup(
        reloads.into_iter().flatten().collect(),
        background.clone(),
    )));
    workers.push(tokio::spawn(tasks.run(background.clone())));
    let reaper = tokio::spawn(record::run_resume_reaper(
        recorders.clone(),
        cancel.child_token(),
    ));

    let mut listening = format!("rtmp={rtmp_addr} http={http_addr}");
    if let Some(a) = rtmps_addr {
        listening.push_str(&format!(" rtmps={a}"));
    }
    if let Some(a) = rtsp_addr {
        listening.push_str(&format!(" rtsp={a}"));
    }
    tracing::info!(rtmp = %rtmp_addr, http = %http_addr, rtmps = ?rtmps_addr, rtsp = ?rtsp_addr, https = config.http.cert_file.is_some(), data_dir = %config.data_dir.display(), "edgerec ready");
    println!("edgerec: listening {listening}");
    system::ready(&format!("listening {listening}"));
    workers.push(tokio::spawn(crate::memory::run_trim(background.clone())));
    workers.push(tokio::spawn(crate::clock_watch::run(background.clone())));
    workers.push(tokio::spawn(record::files::run_file_planner(
        index.clone(),
        storage.clone(),
        background.clone(),
    )));
    // After READY=1, so the first watchdog ping never precedes it.
    let health = tokio::spawn(system::run(
        system::Health {
            index: index.clone(),
            storage,
            recorders: recorders.clone(),
            uploader: uploader_for_health,
            stuck_after: (config.record.flush_interval() * 3).max(Duration::from_secs(30)),
        },
        background.clone(),
        cancel.clone(),
    ));

    cancel.cancelled().await;
    tracing::info!("shutting down: closing publishers and sealing segments");
    system::stopping();
    let _ = ingest.await;
    if let Some(rtsp_ingest) = rtsp_ingest {
        let _ = rtsp_ingest.await;
    }
    sources.stopped().await;
    if !recorders.wait_idle(Duration::from_secs(20)).await {
        tracing::error!(
            "some recorders did not finish in 20 s; startup recovery will adopt their segments"
        );
    }
    let _ = reaper.await;
    background.cancel();
    for w in workers {
        let _ = w.await;
    }
    api_cancel.cancel();
    api.stopped().await;
    if let Ok(Some(reason)) = health.await {
        anyhow::bail!("restart needed: {reason}");
    }
    tracing::info!("stopped");
    Ok(())
}
