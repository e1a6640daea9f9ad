#!/usr/bin/env bash
# One relay run for profiling: smtp-source (20 sessions) -> Sluice (config.example.yaml,
# spool on disk) -> smtp-sink, in a network namespace with only `lo`. Prints intake and
# delivered msg/s, Sluice's user and system CPU per message (/proc/PID/stat), how many
# spool writes each commit (round of fsyncs) covered, and the p50/p99 bucket bounds of end of
# data -> reply. Needs root (namespace). The setup is relay_harness.sh, as in relay_vs_postfix.sh.
#
#   bash benches/profile_sluice.sh                       # epoll, 10,000 x 1 KiB, 1 recipient
#   IO=uring SIZE=51200 MESSAGES=5000 bash benches/profile_sluice.sh
#   PERF="-F 800 --call-graph dwarf,16384" bash benches/profile_sluice.sh   # perf.data in the repo's target/
#   METRICS=/tmp/metrics.txt bash benches/profile_sluice.sh       # keep the final Prometheus scrape
#   SET="s/^  commit_window: .*/  commit_window: 0ms/" bash benches/profile_sluice.sh   # sed on the config
set -euo pipefail
# shellcheck source=benches/relay_harness.sh
source "$(dirname "$0")/relay_harness.sh"

messages=${MESSAGES:-10000}
cleanup() {
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

start_sink
wrapper=()
# shellcheck disable=SC2206 # PERF is a list of perf options
[ -z "${PERF:-}" ] || wrapper=(perf record -o "$repo/target/perf.data" $PERF --)
start_sluice "${IO:-epoll}" "${SET:-}" "${wrapper[@]}"
cpu() { awk '{ print $14, $15 }' "/proc/$sluice_pid/stat"; } # user and system clock ticks
read -r user0 sys0 < <(cpu)
t0=$(date +%s.%N)
smtp-source -s 20 -m "$messages" -l "${SIZE:-1024}" -r "${RCPTS:-1}" -f load@sender.test -t sink@dest.test 127.0.0.1:2525
t1=$(date +%s.%N)
wait_for_sink "$messages" 300
t2=$(date +%s.%N)
read -r user1 sys1 < <(cpu)
curl -sf http://127.0.0.1:9187/metrics > "$work/metrics.txt"
[ -z "${METRICS:-}" ] || cp "$work/metrics.txt" "$METRICS"
per_commit=$(awk '
  $1 == "sluice_spool_messages_per_fsync_sum" { s = $2 } $1 == "sluice_spool_messages_per_fsync_count" { c = $2 }
  END { printf "%.1f", c ? s / c : 0 }' "$work/metrics.txt")
p50=$(quantile sluice_intake_end_of_data_to_reply_seconds 0.5)
p99=$(quantile sluice_intake_end_of_data_to_reply_seconds 0.99)
# With PERF, what was started is perf, which writes perf.data once Sluice has exited.
stop_sluice
hz=$(getconf CLK_TCK)
awk -v n="$messages" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v u="$((user1 - user0))" -v s="$((sys1 - sys0))" -v hz="$hz" -v pc="$per_commit" -v p50="$p50" -v p99="$p99" 'BEGIN {
  printf "intake %.0f msg/s, delivered %.0f msg/s; Sluice CPU per message: user %.0f us, system %.0f us; %s spool writes per commit (messages stored and outcomes recorded); end of data -> reply p50 <= %s ms, p99 <= %s ms\n",
    n / (t1 - t0), n / (t2 - t0), u * 1e6 / hz / n, s * 1e6 / hz / n, pc, p50, p99 }'
