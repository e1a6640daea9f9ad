#!/usr/bin/env bash
# The per-destination message rate and connection cap, measured at the destination.
#
# Starts a recording SMTP sink on 127.0.0.1:2526 (Python, asyncio: it timestamps every
# accepted message and tracks concurrent connections), runs the release relay on
# config.example.yaml with delivery.message_rate and max_connections_per_destination set,
# injects a burst with Postfix's smtp-source, and reports the arrival rate over a 30 s window
# that starts 5 s after the first arrival, against the configured rate, and the most
# connections the sink saw open at once. Loopback only.
#
#   bash benches/shaping_rate.sh            # 50/s, 3 connections, 2,250 messages
#   RATE=20 CONNECTIONS=2 bash benches/shaping_rate.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
rate=${RATE:-50}
connections=${CONNECTIONS:-3}
messages=${MESSAGES:-$((rate * 45))}
# The sink answers each final dot after this long: one connection then carries at most
# 1000/DELAY_MS messages a second, so the rate needs more than one of them.
delay_ms=${DELAY_MS:-40}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

(cd "$repo" && cargo build --release --quiet)
bin="$repo/target/release/sluice"

cat > "$work/sink.py" <<'PY'
import asyncio, sys, time, json
arrivals, open_now, most_open = [], 0, 0

async def session(reader, writer):
    global open_now, most_open
    open_now += 1
    most_open = max(most_open, open_now)
    writer.write(b"220 sink ESMTP\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                arrivals.append(time.monotonic())
                # A destination that takes its time, so the rate needs several connections.
                await asyncio.sleep(DELAY)
                writer.write(b"250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    except (asyncio.CancelledError, ConnectionError):
        pass
    finally:
        open_now -= 1
        writer.close()

DELAY = float(sys.argv[4]) / 1000

async def main(port, expected, out):
    server = await asyncio.start_server(session, "127.0.0.1", port)
    async with server:
        while len(arrivals) < expected:
            await asyncio.sleep(0.1)
    json.dump({"arrivals": arrivals, "most_open": most_open}, open(out, "w"))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
PY
python3 "$work/sink.py" 2526 "$messages" "$work/result.json" "$delay_ms" &
sink=$!
pids+=("$sink")
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2526) 2>/dev/null && break; sleep 0.1; done

cp "$repo/config.example.yaml" "$repo/config.example.users" "$repo/config.example.keys" "$work/"
config="$work/config.example.yaml"
sed -i "s|^  message_rate: null|  message_rate: \"$rate/s\"|; s|^  max_connections_per_destination: .*|  max_connections_per_destination: $connections|" "$config"
grep -q "message_rate: \"$rate/s\"" "$config" || { echo "could not set the rate" >&2; exit 1; }
"$bin" run --config "$config" 2>"$work/daemon.log" &
pids+=("$!")
for _ in $(seq 100); do grep -q " ready version=" "$work/daemon.log" && break; sleep 0.1; done

echo "== $messages messages of 1 KiB in one burst (20 sessions); message_rate $rate/s, max_connections_per_destination $connections; the sink takes $delay_ms ms per message"
smtp-source -s 20 -m "$messages" -l 1024 -f load@sender.test -t sink@dest.test 127.0.0.1:2525
wait "$sink"
python3 - "$work/result.json" "$rate" "$connections" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rate = float(sys.argv[2]); cap = int(sys.argv[3])
t = sorted(r["arrivals"]); start = t[0] + 5; end = start + 30
window = [x for x in t if start <= x < end]
measured = len(window) / 30
print(f"arrivals {len(t)}; first to last {t[-1] - t[0]:.1f} s")
print("per 1 s:", [sum(1 for x in t if t[0] + i <= x < t[0] + i + 1) for i in range(int(t[-1] - t[0]) + 1)])
print("per 5 s:", [sum(1 for x in t if t[0] + 5 * i <= x < t[0] + 5 * i + 5) for i in range(int((t[-1] - t[0]) // 5) + 1)])
print(f"rate over the 30 s window from 5 s after the first arrival: {measured:.2f}/s (configured {rate:g}/s, {100 * (measured - rate) / rate:+.1f}%)")
print(f"most connections open at once at the destination: {r['most_open']} (max_connections_per_destination {cap})")
ok = abs(measured - rate) <= 0.1 * rate and r["most_open"] <= cap
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
