#!/usr/bin/env bash
# The HTTP API under load from h2load (nghttp2's load generator, HTTP/1.1 mode): requests/s
# and recipients/s accepted durably (every 202 waits for its fsync), with p50 and p99 latency
# from h2load's per-request log, for
#   single: one message to one recipient per request;
#   batch:  one message to 100 recipients per request;
#   merge:  100 personalized messages ({{name}} substitutions) per request.
# The release binary runs config.example.yaml (a copy) relaying to smtp-sink, so delivery runs
# meanwhile as it would. `bash benches/api_load.sh [REQUESTS] [CLIENTS]`; needs h2load
# (apt install nghttp2-client), smtp-sink (postfix), python3.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/target/release/sluice"
requests=${1:-20000}
clients=${2:-50}
[ -x "$bin" ] || (cd "$repo" && cargo build --release --quiet)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
cp "$repo/config.example.yaml" "$repo/config.example.users" "$repo/config.example.keys" "$work/"
key=$(grep -o 'sk_[A-Za-z0-9_-]*' "$repo/config.example.keys" | head -1)
smtp-sink -c -u nobody 127.0.0.1:2526 512 > "$work/sink.out" 2>&1 &
pids+=("$!")
"$bin" run --config "$work/config.example.yaml" 2> "$work/daemon.log" &
pids+=("$!")
for _ in $(seq 100); do grep -q " ready version=" "$work/daemon.log" && break; sleep 0.1; done

python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
text = "Hello,\n\nyour order has shipped and will arrive within three days.\n" * 12
json.dump({"from": "shop@example.com", "to": ["customer@dest.example"], "subject": "Your order", "text": text}, open(f"{w}/single.json", "w"))
rcpts = [f"c{i}@dest.example" for i in range(100)]
json.dump({"from": "shop@example.com", "to": rcpts, "subject": "News", "text": text}, open(f"{w}/batch.json", "w"))
json.dump({"from": "shop@example.com", "to": rcpts, "subject": "News for {{name}}", "text": "Dear {{name}},\n" + text,
           "substitutions": {r: {"name": f"Customer {i}"} for i, r in enumerate(rcpts)}}, open(f"{w}/merge.json", "w"))
PY

run() { # run NAME REQUESTS RECIPIENTS_PER_REQUEST
  local name=$1 n=$2 per=$3
  rm -f "$work/$name.log"
  h2load --h1 -n "$n" -c "$clients" -t 1 -d "$work/$name.json" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    --log-file="$work/$name.log" http://127.0.0.1:8025/api/v1/messages > "$work/$name.out"
  python3 - "$work/$name.log" "$work/$name.out" "$name" "$per" <<'PY'
import re, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
status = {}
for r in rows:
    status[r[1]] = status.get(r[1], 0) + 1
lat = sorted(int(r[2]) / 1000 for r in rows)
out = open(sys.argv[2]).read()
rps = float(re.search(r"finished in [^,]+, ([0-9.]+) req/s", out).group(1))
per = int(sys.argv[4])
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{sys.argv[3]}: {len(rows)} requests, status {status}; {rps:.0f} req/s, {rps * per:.0f} recipients/s; latency p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms")
PY
}

run single "$requests" 1
run batch $((requests / 100 > 50 ? requests / 100 : 50)) 100
run merge $((requests / 200 > 20 ? requests / 200 : 20)) 100
echo "daemon log: $(grep -c . "$work/daemon.log") lines; warnings and errors:"
grep -E " (warn|warning|error) " "$work/daemon.log" | sed -E 's/^[^ ]+ //; s/ (queue_id|session|client)=[^ ]+//g' | cut -c1-200 | sort | uniq -c | sort -rn | head -5 || true
