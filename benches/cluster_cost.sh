#!/usr/bin/env bash
# What sharing the limits on Redis costs per message, and how many shared bookings one Redis
# answers.
#
# Part 1, paired runs: the release relay on config.example.yaml, with a message_rate and a
# limits.messages_per_ip too high ever to hold a message back, so every message takes the rate
# line and the intake count; run B adds cluster.redis (Debian's redis-server on 127.0.0.1:6390),
# so both are booked there. Each run: 5,000 x 1 KiB over 20 sessions (Postfix's smtp-source,
# one connection per message) into smtp-sink. Per run: the relay's CPU (utime + stime of the
# whole process, from /proc) per message, the wall time from the first connection to the
# last delivery, and Redis commands per message (INFO commandstats). A and B alternate.
#
# Part 2: redis-benchmark calls the shared-rate script (EVALSHA, `book` mode) from 50
# clients, on one destination and on 1,000 destinations: the bookings per second one Redis
# answers here, which bounds the shared message rate of all nodes together.
#
#   bash benches/cluster_cost.sh                 # 5 pairs of 5,000
#   PAIRS=3 MESSAGES=2000 bash benches/cluster_cost.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
pairs=${PAIRS:-5}
messages=${MESSAGES:-5000}
port=6390
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

(cd "$repo" && cargo build --release --quiet)
bin="$repo/target/release/sluice"
tick=$(getconf CLK_TCK)

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no > "$work/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 50); do redis-cli -p "$port" PING > /dev/null 2>&1 && break; sleep 0.1; done

cp "$repo/config.example.yaml" "$repo/config.example.users" "$repo/config.example.keys" "$work/"
sed -i 's|^  message_rate: null|  message_rate: "100000/s"|; s|^  messages_per_ip: null|  messages_per_ip: "1000000/min burst 100000"|' "$work/config.example.yaml"
cp "$work/config.example.yaml" "$work/cluster.yaml"
sed -i "s|^  redis: null|  redis: { url: \"redis://127.0.0.1:$port\" }|" "$work/cluster.yaml"
for f in config.example.yaml cluster.yaml; do
  grep -q 'message_rate: "100000/s"' "$work/$f" && grep -q 'messages_per_ip: "1000000/min burst 100000"' "$work/$f" || { echo "could not set the limits in $f" >&2; exit 1; }
done
grep -q "url: \"redis://127.0.0.1:$port\"" "$work/cluster.yaml" || { echo "could not set cluster.redis" >&2; exit 1; }

# One run on config $1; prints "cpu_us_per_message wall_s redis_commands_per_message".
run() {
  local config=$1
  # The example's spool, sockets and logs are under ./var: a new one each run.
  rm -rf "$work/var"
  cp "$work/$config" "$work/run.yaml"
  redis-cli -p "$port" CONFIG RESETSTAT > /dev/null
  smtp-sink -c -u nobody 127.0.0.1:2526 256 > "$work/sink.out" 2>&1 &
  local sink=$!
  (cd "$work" && exec "$bin" run --config "$work/run.yaml" 2> "$work/log") &
  local relay=$!
  for _ in $(seq 100); do grep -q " ready\b" "$work/log" && break; sleep 0.05; done
  local start end n=0
  start=$(date +%s.%N)
  smtp-source -s 20 -m "$messages" -l 1024 -f a@b.example -t c@d.example 127.0.0.1:2525
  for _ in $(seq 1200); do
    n=$(tr '\r' '\n' < "$work/sink.out" | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2 || true)
    [ "${n:-0}" -ge "$messages" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  local stat cpu commands
  stat=$(cut -d' ' -f14,15 < "/proc/$relay/stat")
  cpu=$(( ${stat% *} + ${stat#* } ))
  commands=$(redis-cli -p "$port" INFO commandstats | tr -d '\r' | grep -v '^cmdstat_\(info\|config\)' | grep -o 'calls=[0-9]*' | cut -d= -f2 | paste -sd+ | bc)
  kill "$relay"; wait "$relay" 2>/dev/null || true
  kill "$sink"; wait "$sink" 2>/dev/null || true
  [ "${n:-0}" -ge "$messages" ] || { echo "only $n of $messages delivered" >&2; exit 1; }
  echo "$(echo "scale=1; $cpu * 1000000 / $tick / $messages" | bc) $(echo "$end - $start" | bc) $(echo "scale=2; ${commands:-0} / $messages" | bc)"
}

echo "== part 1: $pairs pairs of $messages x 1 KiB, local limits (A) against limits on Redis (B)"
: > "$work/pairs"
for i in $(seq "$pairs"); do
  a=$(run config.example.yaml)
  b=$(run cluster.yaml)
  echo "pair $i: A cpu_us/msg wall_s redis_cmds/msg = $a; B = $b"
  echo "$a $b" >> "$work/pairs"
done
python3 - "$work/pairs" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
med = lambda xs: statistics.median(xs)
a_cpu, a_wall, a_cmd, b_cpu, b_wall, b_cmd = (med([r[i] for r in rows]) for i in range(6))
print(f"median CPU per message: A {a_cpu:.1f} us, B {b_cpu:.1f} us; B - A {b_cpu - a_cpu:+.1f} us, B/A {med([r[3] / r[0] for r in rows]):.3f} (pair by pair)")
print(f"median wall: A {a_wall:.2f} s, B {b_wall:.2f} s; B/A {med([r[4] / r[1] for r in rows]):.3f} (pair by pair)")
print(f"Redis commands per message: A {a_cmd:.2f}, B {b_cmd:.2f}")
PY

echo "== part 2: the shared-rate script called by redis-benchmark, 50 clients, 200,000 calls"
sha=$(redis-cli -p "$port" SCRIPT LOAD "$(sed -n '/^const GCRA: &str = r"/,/^";/p' "$repo/src/cluster/rate.rs" | sed '1d;$d')")
redis-benchmark -p "$port" -c 50 -n 200000 -q EVALSHA "$sha" 1 "sluice:rate:one.example" 10 0 book | tr '\r' '\n' | tail -n 1 | sed 's/^/one destination: /'
redis-benchmark -p "$port" -c 50 -n 200000 -r 1000 -q EVALSHA "$sha" 1 "sluice:rate:__rand_int__.example" 10 0 book | tr '\r' '\n' | tail -n 1 | sed 's/^/1,000 destinations: /'
