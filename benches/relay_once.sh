#!/usr/bin/env bash
# One relay run for paired comparisons of two builds: `bash benches/relay_once.sh BIN CONFIG`.
# 5,000 x 1 KiB messages over 20 sessions (Postfix's smtp-source, one connection per message)
# through BIN run on a copy of CONFIG (config.example.yaml of BIN's own commit: it relays to
# 127.0.0.1:2526) into smtp-sink; returns once the sink has them all. Time it from outside,
# alternating the two builds' runs, and compare CPU and wall time pair by pair.
set -euo pipefail
bin=$1
w=$(mktemp -d)
cp "$2" "$w/config.yaml"
# The example names its users file by a relative path.
cp "$(dirname "$2")/config.example.users" "$(dirname "$2")/config.example.keys" "$w/" 2>/dev/null || true
smtp-sink -c -u nobody 127.0.0.1:2526 256 > "$w/sink.out" 2>&1 &
sink=$!
"$bin" run --config "$w/config.yaml" 2> "$w/log" &
relay=$!
for _ in $(seq 100); do grep -q " ready\b" "$w/log" && break; sleep 0.05; done
smtp-source -s 20 -m 5000 -l 1024 -f a@b.example -t c@d.example 127.0.0.1:2525
n=0
for _ in $(seq 600); do
  n=$(tr '\r' '\n' < "$w/sink.out" | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2 || true)
  [ "${n:-0}" -ge 5000 ] && break
  sleep 0.05
done
kill "$relay"; wait "$relay" || true
kill "$sink"; wait "$sink" 2>/dev/null || true
echo "delivered ${n:-0}, log lines $(wc -l < "$w/log")"
rm -rf "$w"
[ "${n:-0}" -ge 5000 ]
