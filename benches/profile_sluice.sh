#!/usr/bin/env bash
# One relay run for profiling: smtp-source (20 sessions) -> Sluice (config.example.yaml,
# spool on disk) -> smtp-sink, in a network namespace with only `lo`. Prints intake and
# delivered msg/s, Sluice's user and system CPU per message (/proc/PID/stat) and how many
# messages each spool commit (round of fsyncs) covered. Needs root (namespace).
#
#   bash benches/profile_sluice.sh                       # epoll, 10,000 x 1 KiB, 1 recipient
#   IO=uring SIZE=51200 MESSAGES=5000 bash benches/profile_sluice.sh
#   PERF="-F 800 --call-graph dwarf,16384" bash benches/profile_sluice.sh   # perf.data in the repo's target/
#   METRICS=/tmp/metrics.txt bash benches/profile_sluice.sh       # keep the final Prometheus scrape
#   SET="s/^  commit_window: .*/  commit_window: 0ms/" bash benches/profile_sluice.sh   # sed on the config
set -euo pipefail

if [ -z "${IN_NETNS:-}" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "run as root (network namespace)" >&2; exit 1; }
  repo=$(cd "$(dirname "$0")/.." && pwd)
  (cd "$repo" && cargo build --release --quiet)
  exec unshare --net env IN_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/target/release/sluice"
messages=${MESSAGES:-10000}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/sluice"
cp "$repo/config.example.yaml" "$repo/config.example.users" "$work/sluice/"
sed -i "s/^  io: auto/  io: ${IO:-epoll}/" "$work/sluice/config.example.yaml"
[ -z "${SET:-}" ] || sed -i "$SET" "$work/sluice/config.example.yaml"
smtp-sink -u nobody -c 127.0.0.1:2526 1000 > "$work/sink.out" 2>&1 &
pids+=($!)
cd "$work/sluice"
if [ -n "${PERF:-}" ]; then
  # shellcheck disable=SC2086 # PERF is a list of perf options
  perf record -o "$repo/target/perf.data" $PERF -- "$bin" run --config config.example.yaml 2> "$work/sluice.log" &
else
  "$bin" run --config config.example.yaml 2> "$work/sluice.log" &
fi
launcher=$!
pids+=($launcher)
for _ in $(seq 100); do grep -q "ready" "$work/sluice.log" && break; sleep 0.1; done
grep -q "ready" "$work/sluice.log" || { echo "sluice did not start" >&2; cat "$work/sluice.log" >&2; exit 1; }
relay=$(pgrep -n -x sluice)
cpu() { awk '{ print $14, $15 }' "/proc/$relay/stat"; } # user and system clock ticks
read -r user0 sys0 < <(cpu)
t0=$(date +%s.%N)
smtp-source -s 20 -m "$messages" -l "${SIZE:-1024}" -r "${RCPTS:-1}" -f load@sender.test -t sink@dest.test 127.0.0.1:2525
t1=$(date +%s.%N)
sink_count() { tr '\r' '\n' < "$work/sink.out" | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2; }
deadline=$((SECONDS + 300))
while [ "$(sink_count || echo 0)" != "$messages" ]; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "the sink has $(sink_count) of $messages" >&2; exit 1; }
  sleep 0.05
done
t2=$(date +%s.%N)
read -r user1 sys1 < <(cpu)
curl -sf http://127.0.0.1:9187/metrics > "$work/metrics.txt"
[ -z "${METRICS:-}" ] || cp "$work/metrics.txt" "$METRICS"
per_commit=$(awk '
  $1 == "sluice_spool_messages_per_fsync_sum" { s = $2 } $1 == "sluice_spool_messages_per_fsync_count" { c = $2 }
  END { printf "%.1f", c ? s / c : 0 }' "$work/metrics.txt")
# Stop Sluice itself: with PERF the launcher is perf, which writes perf.data once its child exits.
kill -TERM "$relay"
wait "$launcher" || true
hz=$(getconf CLK_TCK)
awk -v n="$messages" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v u="$((user1 - user0))" -v s="$((sys1 - sys0))" -v hz="$hz" -v pc="$per_commit" 'BEGIN {
  printf "intake %.0f msg/s, delivered %.0f msg/s; Sluice CPU per message: user %.0f us, system %.0f us; %s spool writes per commit (messages stored and outcomes recorded)\n",
    n / (t1 - t0), n / (t2 - t0), u * 1e6 / hz / n, s * 1e6 / hz / n, pc }'
