#!/usr/bin/env bash
# Runs every fuzz target (fuzz/src/lib.rs) for a number of executions and prints, per
# target, the executions, the corpus size, and the crashes found (saved under
# fuzz/artifacts/<target>/; a fixed one is moved to fuzz/regressions/<target>/ so the
# corpus replay test keeps it). cargo fuzz on the stable toolchain, no sanitizer (-s none).
#
#   scripts/fuzz.sh [EXECUTIONS] [TARGET...]     EXECUTIONS defaults to 10000000
#
# The corpus grows in fuzz/corpus/<target>/; commit it minimized (`cargo fuzz cmin`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

runs=${1:-10000000}
shift || true
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
fi

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
start=$SECONDS
cargo fuzz build -s none -O
echo "built in $((SECONDS - start)) s"
bin_dir=target/$(rustc -vV | sed -n 's/^host: //p')/release

printf '%-16s %12s %10s %8s %8s %s\n' target executions exec/s corpus crashes seconds
failed=0
for t in "${targets[@]}"; do
    corpus=corpus/$t
    artifacts=artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    # The init hook writes the target's seeds (built from real sessions) into the corpus.
    EDGEREC_FUZZ_SEEDS=$corpus "$bin_dir/$t" -runs=0 "$corpus" >/dev/null 2>&1
    log=$artifacts/last-run.log
    t0=$SECONDS
    set +e
    "$bin_dir/$t" "$corpus" -runs="$runs" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    crashes=$(find "$artifacts" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
    printf '%-16s %12s %10s %8s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" \
        "$(find "$corpus" -type f | wc -l)" "$crashes" "$((SECONDS - t0))"
    if ((status != 0 || crashes > 0)); then
        failed=1
        grep -m3 -E 'panicked|ERROR|SUMMARY' "$log" | sed 's/^/    /' || true
    fi
done
exit $failed
