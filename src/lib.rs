//! edgerec: the venue recorder. Publishers stream to the box (RTMP); every stream is
//! recorded to crash-safe, keyframe-aligned MPEG-TS segments on flash, indexed in sled,
//! and served back as HLS.
//!
//! Layout (see `../shared/DESIGN.md`): pure code without IO in [`media`], [`proto`], [`mux`]
//! and [`auth`] (access checks); IO in [`ingest`], [`record`], [`storage`], [`index`] and
//! [`api`]; [`daemon`] wires them; [`tls`] holds the RTMPS/HTTPS certificates; `main.rs`
//! is the CLI.

// Reviewed exceptions: `ingest::lowat` (a setsockopt), `memory` (mallopt, malloc_trim)
// and `clock_watch` (adjtimex): calls no safe crate offers.
#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod clock;
pub mod clock_watch;
pub mod config;
pub mod daemon;
pub mod index;
pub mod ingest;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod mux;
pub mod notify;
pub mod package;
pub mod proto;
pub mod record;
pub mod storage;
pub mod stream_key;
pub mod system;
pub mod tls;
pub mod upload;
