#!/usr/bin/env bash
# The daemon's memory while many large messages arrive at once: SESSIONS concurrent
# sessions of Postfix's smtp-source each send one message of SIZE bytes to a daemon with
# delivery paused (so only intake runs); the daemon's RSS is sampled every 0.2 s and its
# high-water mark (VmHWM) read from /proc before and after. The target (issue 15) is a peak
# under 256 MiB for 200 x 50 MB. SLUICE_BIN runs another build (an older one, for a before).
# Usage: bash benches/intake_memory.sh [SESSIONS] [SIZE]   (defaults: 200 52428800)
# Needs SESSIONS x SIZE of free disk under $TMPDIR (10 GB by default).
set -euo pipefail
sessions=${1:-200}
size=${2:-52428800}
source "$(dirname "$0")/paused_daemon.sh"
start_paused_daemon "limits: { max_message_size: $((size + 1048576)), max_connections: $((sessions + 200)) }"
idle=$(( $(kib VmRSS) / 1024 ))
hwm_start=$(( $(kib VmHWM) / 1024 ))
peak_sampled=0
(
  while kill -0 "$pid" 2>/dev/null; do
    kib VmRSS
    sleep 0.2
  done
) > "$work/rss.samples" 2>/dev/null &
sampler=$!
start=$(date +%s.%N)
smtp-source -s "$sessions" -m "$sessions" -l "$size" -f a@x.test -t b@y.test "127.0.0.1:$port"
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
kill "$sampler" 2>/dev/null || true
peak_sampled=$(sort -n "$work/rss.samples" | tail -n 1)
hwm=$(( $(kib VmHWM) / 1024 ))
queued=$("$bin" queue list --json --config "$work/config.yaml" | wc -l)
mb=$(echo "$sessions * $size / 1000000" | bc)
echo "intake memory: $sessions sessions x $size bytes ($mb MB) in $(printf %.1f "$elapsed") s; $queued queued; daemon RSS idle ${idle} MiB (high-water at start ${hwm_start} MiB), peak sampled $((peak_sampled / 1024)) MiB, high-water ${hwm} MiB"
[ "$queued" = "$sessions" ] || { echo "intake memory: $queued of $sessions messages queued" >&2; exit 1; }
