//! Wiring of the running daemon: open the index, run startup recovery, bind the
//! listeners, start ingest, the API and the resume-window reaper, and on shutdown seal
//! every open segment before exiting. `main.rs` only parses the CLI and calls [`run`].

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
use crate::upload::Uploader;

/// Opens the index (a lock held by another edgerec is reported as such by [`Index::open`]).
pub fn open_index(config: &Config) -> anyhow::Result<Index> {
    let dir = config.index_dir();
    Index::open(&dir).with_context(|| format!("cannot open the index in {}", dir.display()))
}

/// Runs the recorder until `cancel`. Prints one `edgerec: listening rtmp=ADDR http=ADDR`
/// line on stdout once it accepts publishes (tools and tests read the bound ports there).
pub async fn run(config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    for w in config.warnings() {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    let media_dir = config.media_dir();
    std::fs::create_dir_all(&media_dir)
        .with_context(|| format!("cannot create the media folder {}", media_dir.display()))?;
    let index = open_index(&config)?;
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
    let api_state = ApiState {
        index: index.clone(),
        storage: storage.clone(),
        recorders: recorders.clone(),
        config: config.clone(),
        uploader: uploader.clone(),
        plans: api::PlanCache::default(),
        access: api::Access::new(&config.http),
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
        storage,
        policy,
        recorders.disk_state(),
        background.clone(),
    )));
    let ingest_cancel = cancel.child_token();
    let ingest = tokio::spawn(crate::ingest::rtmp::run(
        rtmp,
        config.rtmp.clone(),
        crate::ingest::admission::PublishGate::new(config.publish_auth.clone()),
        recorders.clone(),
        ingest_cancel.clone(),
    ));
    let api_cancel = CancellationToken::new();
    let uploader_for_health = api_state.uploader.clone();
    let api = tokio::spawn(api::serve(http, api_state, api_cancel.clone()));
    let reaper = tokio::spawn(record::run_resume_reaper(
        recorders.clone(),
        cancel.child_token(),
    ));

    tracing::info!(rtmp = %rtmp_addr, http = %http_addr, data_dir = %config.data_dir.display(), "edgerec ready");
    println!("edgerec: listening rtmp={rtmp_addr} http={http_addr}");
    system::ready(&format!("listening rtmp={rtmp_addr} http={http_addr}"));
    workers.push(tokio::spawn(record::files::run_file_planner(
        index.clone(),
        background.clone(),
    )));
    // After READY=1, so the first watchdog ping never precedes it.
    workers.push(tokio::spawn(system::run(
        system::Health {
            index: index.clone(),
            recorders: recorders.clone(),
            uploader: uploader_for_health,
            stuck_after: (config.record.flush_interval() * 3).max(Duration::from_secs(30)),
        },
        background.clone(),
    )));

    cancel.cancelled().await;
    tracing::info!("shutting down: closing publishers and sealing segments");
    system::stopping();
    let _ = ingest.await;
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
    let _ = api.await;
    tracing::info!("stopped");
    Ok(())
}
