#!/usr/bin/env bash
# The daemon's memory while `sluice queue list` streams a long queue: N messages (default
# 100,000) are injected with Postfix's smtp-source into a daemon with delivery paused, then
# listed as JSON lines; the daemon's RSS and high-water mark are read from /proc before and
# after, and the client's peak RSS from /usr/bin/time. Usage: bash benches/queue_list_memory.sh [N]
set -euo pipefail
n=${1:-100000}
repo=$(cd "$(dirname "$0")/.." && pwd)
(cd "$repo" && cargo build --release --quiet)
bin="$repo/target/release/sluice"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/config.yaml" <<YAML
hostname: relay.test
spool: { path: $work/spool }
admin: { socket: $work/admin.sock }
metrics: { address: null }
dns: { nameservers: ["127.0.0.1:9"], timeout: 1s }
delivery: { paused: true }
sendmail: { socket: $work/sendmail.sock, maildrop: $work/maildrop }
listeners:
  - { address: "127.0.0.1:$port", mode: relay }
YAML
SLUICE_LOG=warn "$bin" run --config "$work/config.yaml" 2> "$work/daemon.log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/admin.sock" ] && break; sleep 0.1; done
rss() { awk -v k="$1" '$1 == k":" { print int($2 / 1024) }' "/proc/$pid/status"; }
start=$SECONDS
smtp-source -s 20 -m "$n" -l 1024 -f a@x.test -t b@y.test "127.0.0.1:$port"
echo "injected $n messages in $((SECONDS - start)) s"
before=$(rss VmRSS)
hwm_before=$(rss VmHWM)
/usr/bin/time -f "%M" -o "$work/client.kb" "$bin" queue list --json --config "$work/config.yaml" > "$work/list.out"
lines=$(wc -l < "$work/list.out")
after=$(rss VmRSS)
peak=$(rss VmHWM)
echo "listed $lines messages; daemon RSS before ${before} MiB, after ${after} MiB; high-water before ${hwm_before} MiB, after ${peak} MiB; client peak RSS $(( $(cat "$work/client.kb") / 1024 )) MiB"
