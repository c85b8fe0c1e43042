//! Replays every fuzz target's seeds, saved corpus (`fuzz/corpus/<target>/`) and fixed
//! findings (`fuzz/regressions/<target>/`) through the same target bodies the fuzzer runs
//! (`fuzz/src/`), under the same memory oracle: a parser change that breaks an input
//! the fuzzer once reached fails here, in an ordinary `cargo test`, without libFuzzer.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz;

use std::path::Path;

#[global_allocator]
static ALLOC: fuzz::PeakAlloc = fuzz::PeakAlloc;

fn saved_inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for folder in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("read a corpus file");
            inputs.push((path.display().to_string(), bytes));
        }
    }
    inputs.sort();
    inputs
}

/// One test for all targets: the oracle's counters are process-wide, so inputs run one
/// at a time.
#[test]
fn every_seed_corpus_input_and_fixed_finding_still_passes_its_target() {
    assert!(
        fuzz::oracle_installed(),
        "the memory oracle is not this test's allocator"
    );
    let mut counts = Vec::new();
    for target in fuzz::TARGETS {
        let seeds = fuzz::seeds(target);
        assert!(!seeds.is_empty(), "{target} has no seeds");
        for seed in &seeds {
            fuzz::run(target, seed);
        }
        let saved = saved_inputs(target);
        for (path, bytes) in &saved {
            let result = std::panic::catch_unwind(|| fuzz::run(target, bytes));
            assert!(result.is_ok(), "{target}: {path} fails again");
        }
        counts.push(format!("{target} {}+{}", seeds.len(), saved.len()));
    }
    println!("replayed (seeds+saved): {}", counts.join(", "));

    // The oracle itself: what the old AMF0 parser did with a command of nulls (tens of
    // bytes held per input byte, megabytes in all) is a finding.
    let held_megabytes = std::panic::catch_unwind(|| {
        fuzz::within_budget("oracle", 11, || {
            std::hint::black_box(vec![0u8; 8 << 20]);
        })
    });
    assert!(
        held_megabytes.is_err(),
        "8 MiB held for 11 bytes passed the oracle"
    );
}
