#![no_main]
use edgerec_fuzz::{run, write_seeds_if_asked, PeakAlloc};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

libfuzzer_sys::fuzz_target!(init: write_seeds_if_asked("flv_demux"), |data: &[u8]| run("flv_demux", data));
