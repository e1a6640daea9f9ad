#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a bounded time: `bash fuzz/run.sh [seconds] [target...]`
# (default 20 s each, every target). Prints the executions per target; stops at the first
# crash, leaving the input in fuzz/artifacts/<target>/. cargo-fuzz needs nightly features:
# RUSTC_BOOTSTRAP=1 lets the stable toolchain build them.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^sluice-fuzz$')
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
# Without ASan: the targets look for panics, wrong answers and runaway memory in safe Rust;
# the instrumented build takes minutes instead of ten.
export RUSTC_BOOTSTRAP=1
cargo fuzz build -a --sanitizer none >/dev/null
bin=target/x86_64-unknown-linux-gnu/release
total=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$(mktemp)
    if ! "$bin/$t" "corpus/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=16384 -timeout=10 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    total=$((total + runs))
    printf 'fuzz: %-18s %10d executions in %ss, no crash\n' "$t" "$runs" "$seconds"
    rm -f "$log"
done
printf 'fuzz: %d executions in all\n' "$total"
