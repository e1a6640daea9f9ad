#!/usr/bin/env bash
# The daemon's memory while `sluice queue list` streams a long queue: N messages (default
# 100,000) are injected with Postfix's smtp-source into a daemon with delivery paused, then
# listed as JSON lines; the daemon's RSS and high-water mark are read from /proc before and
# after, and the client's peak RSS from /usr/bin/time. Usage: bash benches/queue_list_memory.sh [N]
set -euo pipefail
n=${1:-100000}
source "$(dirname "$0")/paused_daemon.sh"
start_paused_daemon
rss() { echo $(( $(kib "$1") / 1024 )); }
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
