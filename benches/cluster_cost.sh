#!/usr/bin/env bash
# What sharing the limits on Redis costs per message, and how many shared bookings one Redis
# answers.
#
# Part 1, runs in rounds: the release relay on config.example.yaml as it is (U, no limits);
# with a message_rate and a limits.messages_per_ip too high ever to hold a message back, so
# every message takes the rate line and the intake count (A); and with cluster.redis too
# (Debian's redis-server on 127.0.0.1:6390), so both are booked there (B). Each run: 5,000 x 1 KiB over 20 sessions (Postfix's smtp-source,
# one connection per message) into smtp-sink. Per run: the relay's CPU (utime + stime of the
# whole process, from /proc) per message, the wall time from the first connection to the
# last delivery, and Redis round trips per message (redis-cli MONITOR, commands run inside a
# script left out).
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
cp "$repo/config.example.yaml" "$work/unlimited.yaml"
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
  # Every command a client sends, one line each (those run inside a script say "lua").
  redis-cli -p "$port" MONITOR > "$work/monitor" &
  local monitor=$!
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
  kill "$monitor"; wait "$monitor" 2>/dev/null || true
  grep -v ' lua\]' "$work/monitor" | grep -v '"MONITOR"\|"CONFIG"\|^OK' | awk '{print $4}' | sort | uniq -c > "$work/commands.$config" || true
  commands=$(awk '{n += $1} END {print n + 0}' "$work/commands.$config")
  kill "$relay"; wait "$relay" 2>/dev/null || true
  kill "$sink"; wait "$sink" 2>/dev/null || true
  [ "${n:-0}" -ge "$messages" ] || { echo "only $n of $messages delivered" >&2; exit 1; }
  echo "$(echo "scale=1; $cpu * 1000000 / $tick / $messages" | bc) $(echo "$end - $start" | bc) $(echo "scale=2; ${commands:-0} / $messages" | bc)"
}

echo "== part 1: $pairs rounds of $messages x 1 KiB: no limits (U), local limits (A), limits on Redis (B)"
: > "$work/pairs"
for i in $(seq "$pairs"); do
  u=$(run unlimited.yaml)
  a=$(run config.example.yaml)
  b=$(run cluster.yaml)
  echo "round $i: cpu_us/msg wall_s redis_cmds/msg: U $u; A $a; B $b"
  echo "$u $a $b" >> "$work/pairs"
done
python3 - "$work/pairs" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
med = lambda xs: statistics.median(xs)
col = lambda i: med([r[i] for r in rows])
ratio = lambda i, j: med([r[i] / r[j] for r in rows])
print(f"median CPU per message: U {col(0):.1f} us, A {col(3):.1f} us, B {col(6):.1f} us; B/A {ratio(6, 3):.3f}, B/U {ratio(6, 0):.3f}, A/U {ratio(3, 0):.3f} (round by round)")
print(f"median wall: U {col(1):.2f} s, A {col(4):.2f} s, B {col(7):.2f} s; B/A {ratio(7, 4):.3f}, B/U {ratio(7, 1):.3f} (round by round)")
print(f"Redis round trips per message: U {col(2):.2f}, A {col(5):.2f}, B {col(8):.2f}")
PY

echo "Redis commands (round trips) in the last run with cluster.redis, by command:"
cat "$work/commands.cluster.yaml"

echo "== part 2: the shared-rate script called by redis-benchmark, 50 clients, 200,000 calls"
sha=$(redis-cli -p "$port" SCRIPT LOAD "$(sed -n '/^const GCRA: &str = r"/,/^";/p' "$repo/src/cluster/rate.rs" | sed '1d;$d')")
redis-benchmark -p "$port" -c 50 -n 200000 -q EVALSHA "$sha" 1 "sluice:rate:one.example" 10 0 book | tr '\r' '\n' | tail -n 1 | sed 's/^/one destination: /'
redis-benchmark -p "$port" -c 50 -n 200000 -r 1000 -q EVALSHA "$sha" 1 "sluice:rate:__rand_int__.example" 10 0 book | tr '\r' '\n' | tail -n 1 | sed 's/^/1,000 destinations: /'
