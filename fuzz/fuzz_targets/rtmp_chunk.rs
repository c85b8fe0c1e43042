#![no_main]
use edgerec_fuzz::{run, write_seeds_if_asked, PeakAlloc};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

libfuzzer_sys::fuzz_target!(init: write_seeds_if_asked("rtmp_chunk"), |data: &[u8]| run("rtmp_chunk", data));
