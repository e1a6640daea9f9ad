#!/usr/bin/env bash
# Interop and load check with clients nobody on this team wrote: swaks and Postfix's
# smtp-source, against the release binary running config.example.yaml (copied to a temporary
# directory, so its relative spool and socket land there). Loopback only.
#
# Checks: swaks gets a 250; an untrusted source address (127.0.0.2) is refused (swaks exit 24);
# swaks submits with AUTH PLAIN and LOGIN over STARTTLS and implicit TLS; a wrong password fails
# AUTH (exit 28); submission without AUTH gets 530; smtp-source with 20 sessions gets every
# message accepted while the smarthost (smtp-sink) is down; after kill -9 and a restart every
# accepted message is still queued; once smtp-sink runs, every accepted message arrives there
# exactly once. Then relay runs, smtp-source -> Sluice -> smtp-sink, with the delivery workers on
# io_uring and then on epoll. Prints intake rate, commit latency, messages per fsync and
# delivered messages per second.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin="$repo/target/release/sluice"
messages=${INTEROP_MESSAGES:-5000}
work=$(mktemp -d)
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill -9 "$daemon_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  [ -n "$aio_pid" ] && kill "$aio_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "interop: FAIL: $*" >&2; tail -n 5 "$work"/daemon.*.log >&2 2>/dev/null; exit 1; }

sink_pid=""
aio_pid=""
for tool in swaks smtp-source smtp-sink curl jq; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -x "$bin" ] || (cd "$repo" && cargo build --release --quiet)

cp "$repo/config.example.yaml" "$repo/config.example.users" "$repo/config.example.keys" "$work/"
mv "$work/config.example.yaml" "$work/config.yaml"
# Retry every second so the queue drains soon after the sink starts.
sed -i 's/^  retry: .*/  retry: [1s]/' "$work/config.yaml"
# aio.test goes to Python's aiosmtpd (no PIPELINING: the lock-step path), the rest to smtp-sink.
sed -i 's/^  routes: {}/  routes: { "aio.test": "[127.0.0.1]:2527" }/' "$work/config.yaml"
grep -q 'aio.test' "$work/config.yaml" || fail "could not add the aiosmtpd route"
grep -q '^  retry: \[1s\]' "$work/config.yaml" || fail "could not shorten the retry schedule"
"$bin" check-config --config "$work/config.yaml" >/dev/null || fail "check-config refused config.example.yaml"

starts=0
start_daemon() {
  starts=$((starts + 1))
  log="$work/daemon.$starts.log"
  "$bin" run --config "$work/config.yaml" 2>"$log" &
  daemon_pid=$!
  disown "$daemon_pid"
  for _ in $(seq 100); do
    grep -q " ready version=" "$log" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "daemon did not start (is another relay, the README's say, still running on 127.0.0.1:2525? stop it first):
$(cat "$log")"
}

queued() {
  "$bin" queue list --config "$work/config.yaml" --json | grep -c '"queue_id"' || true
}

metric() { # metric NAME: the sample value of an unlabelled metric
  curl -sf http://127.0.0.1:9187/metrics | awk -v n="$1" '$1 == n { print $2 }'
}

quantile() { # quantile HISTOGRAM Q: the upper bound of the bucket holding quantile Q
  curl -sf http://127.0.0.1:9187/metrics | awk -v h="$1" -v q="$2" '
    index($1, h "_bucket{le=\"") == 1 { split($1, a, "\""); le[n] = a[2]; c[n++] = $2 }
    $1 == h "_count" { total = $2 }
    END { for (i = 0; i < n; i++) if (c[i] >= q * total) { print le[i]; exit } }'
}

start_daemon

echo "== swaks, trusted client"
out=$(swaks --server 127.0.0.1:2525 --from alice@sender.test --to bob@dest.test --h-Subject "swaks interop" 2>&1) || fail "swaks exit $?: $out"
echo "$out" | grep -q "250 2.0.0 OK queued as" || fail "no queued reply: $out"

echo "== swaks, untrusted client 127.0.0.2 (relay must be denied)"
set +e
out=$(swaks --server 127.0.0.1:2525 --local-interface 127.0.0.2 --from a@outside.test --to victim@dest.test 2>&1)
rc=$?
set -e
[ "$rc" -eq 24 ] || fail "expected swaks exit 24 (relay denied), got $rc: $out"
echo "$out" | grep -q "550 5.7.1" || fail "no 550 5.7.1: $out"

echo "== swaks AUTH PLAIN and LOGIN over STARTTLS (2587) and implicit TLS (2465)"
for auth in PLAIN LOGIN; do
  for tls in "--server 127.0.0.1:2587 --tls" "--server 127.0.0.1:2465 --tls-on-connect"; do
    # shellcheck disable=SC2086
    out=$(swaks $tls --auth "$auth" --auth-user demo --auth-password demo-password \
      --from demo@sender.test --to someone@dest.test 2>&1) || fail "swaks $tls $auth exit $?: $out"
    echo "$out" | grep -q "235 2.7.0" || fail "no 235 for $auth with $tls: $out"
    echo "$out" | grep -q "250 2.0.0 OK queued as" || fail "not queued for $auth with $tls: $out"
  done
done
set +e
out=$(swaks --server 127.0.0.1:2587 --tls --auth PLAIN --auth-user demo --auth-password wrong --from a@x.test --to b@y.test 2>&1)
rc=$?
set -e
[ "$rc" -eq 28 ] || fail "a wrong password should fail AUTH (swaks exit 28), got $rc: $out"
set +e
out=$(swaks --server 127.0.0.1:2587 --from a@x.test --to b@y.test 2>&1)
rc=$?
set -e
echo "$out" | grep -q "530 5.7.0" || fail "submission without AUTH must get 530 5.7.0 (exit $rc): $out"

echo "== smtp-source: $messages messages of 1 KiB over 20 sessions"
start=$(date +%s.%N)
smtp-source -s 20 -m "$messages" -l 1024 -f load@sender.test -t sink@dest.test 127.0.0.1:2525 || fail "smtp-source failed"
end=$(date +%s.%N)
accepted=$(metric sluice_intake_messages_accepted_total)
expected=$((messages + 5))
[ "$accepted" -eq "$expected" ] || fail "accepted $accepted, expected $expected"
rate=$(echo "$messages / ($end - $start)" | bc -l)
lat_sum=$(metric sluice_spool_commit_latency_seconds_sum)
lat_count=$(metric sluice_spool_commit_latency_seconds_count)
mpf_sum=$(metric sluice_spool_messages_per_fsync_sum)
mpf_count=$(metric sluice_spool_messages_per_fsync_count)
printf 'intake (smarthost down, queue retried every second): %.0f msg/s; commit latency mean %.2f ms, p50 <= %s s, p99 <= %s s; messages per fsync mean %.1f (%d fsync rounds)\n' \
  "$rate" "$(echo "$lat_sum * 1000 / $lat_count" | bc -l)" \
  "$(quantile sluice_spool_commit_latency_seconds 0.5)" "$(quantile sluice_spool_commit_latency_seconds 0.99)" \
  "$(echo "$mpf_sum / $mpf_count" | bc -l)" "$mpf_count"

echo "== kill -9, restart, everything acknowledged is still queued (the smarthost is down)"
before=$(queued)
[ "$before" -eq "$expected" ] || fail "queue holds $before before the kill"
kill -9 "$daemon_pid"
while kill -0 "$daemon_pid" 2>/dev/null; do sleep 0.05; done
daemon_pid=""
start_daemon
after=$(queued)
[ "$after" -eq "$before" ] || fail "queue held $before before kill -9 and $after after restart"

sink_count() { # transactions smtp-sink has accepted so far
  tr '\r' '\n' < "$work/sink.out" | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2
}
wait_sink() { # wait_sink N SECONDS
  local deadline=$((SECONDS + $2))
  while [ "$(sink_count || echo 0)" != "$1" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "smtp-sink has $(sink_count) of $1 messages"
    sleep 0.1
  done
}

echo "== smtp-sink as the smarthost: the queue drains, every message arrives once"
smtp-sink -u nobody -c 127.0.0.1:2526 1000 > "$work/sink.out" 2>&1 &
sink_pid=$!
wait_sink "$expected" 120
for _ in $(seq 100); do [ "$(queued)" -eq 0 ] && break; sleep 0.1; done
[ "$(queued)" -eq 0 ] || fail "$(queued) messages still queued after delivery"

echo "== aiosmtpd as a destination (lock-step SMTP, no PIPELINING)"
python3 -m aiosmtpd -n -l 127.0.0.1:2527 -c aiosmtpd.handlers.Mailbox "$work/maildir" > "$work/aiosmtpd.log" 2>&1 &
aio_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2527) 2>/dev/null && break; sleep 0.1; done
for to in one@aio.test two@aio.test; do
  swaks --server 127.0.0.1:2525 --from alice@sender.test --to "$to" --h-Subject "to aiosmtpd" >/dev/null 2>&1 || fail "swaks to $to"
done
for _ in $(seq 100); do [ "$(ls "$work/maildir/new" 2>/dev/null | wc -l)" -ge 2 ] && break; sleep 0.1; done
[ "$(ls "$work/maildir/new" | wc -l)" -eq 2 ] || fail "aiosmtpd received $(ls "$work/maildir/new" 2>/dev/null | wc -l) of 2 messages"
grep -q "by relay.example.net (Sluice)" "$work"/maildir/new/* || fail "no Sluice Received field at aiosmtpd"

echo "== the README's HTTP API example: curl -> Sluice (DKIM-signed) -> aiosmtpd, dkimpy verifies"
# The README's commands as written, with this run's paths and a recipient routed to aiosmtpd.
example=$(awk '/^## HTTP API/ { on = 1 } on && /^```sh/ { code = 1; next } code && /^```/ { exit } code' "$repo/README.md")
[ -n "$example" ] || fail "no example in the README's HTTP API section"
example=${example//.\/target\/release\/sluice/$bin}
example=${example//config.example.yaml/$work/config.yaml}
example=${example//var\/demo.key/$work/var/demo.key}
example=${example//someone@example.net/someone@aio.test}
sed -i 's|^  sign: \[\]|  sign: [{ domain: example.com, selector: demo, key: ./var/demo.key }]|' "$work/config.yaml"
grep -q 'selector: demo' "$work/config.yaml" || fail "could not add the dkim entry"
bash -c "$example" > "$work/example.out" 2>&1 || fail "the README's example failed: $(cat "$work/example.out")"
api_id=$(tail -n 1 "$work/example.out" | jq -r '.messages[0].queue_id')
[ "${#api_id}" -eq 13 ] || fail "no queue id from the API: $(cat "$work/example.out")"
for _ in $(seq 100); do grep -l "Hello Someone" "$work"/maildir/new/* >/dev/null 2>&1 && break; sleep 0.1; done
api_mail=$(grep -l "Hello Someone" "$work"/maildir/new/* | head -1)
[ -n "$api_mail" ] || fail "the API's message did not reach aiosmtpd"
record=$(grep ' IN TXT ' "$work/example.out" | cut -d'"' -f2- | sed 's/" "//g; s/" )$//')
verdict=$(/usr/bin/python3 "$repo/tests/it/peers/dkim_verify.py" "$api_mail" --record demo._domainkey.example.com "$record")
echo "$verdict" | jq -e 'length == 1 and .[0].ok and .[0].a == "ed25519-sha256" and .[0].d == "example.com"' >/dev/null \
  || fail "dkimpy does not verify the API's message: $verdict"
echo "http api: $api_id accepted (202), delivered to aiosmtpd, its DKIM signature verified by dkimpy"

echo "== the accounting file, read with jq (docs/ACCOUNTING.md)"
# Slurped with any(): jq 1.6's -e judges only the last input's output, so select() over a
# file of records reports "nothing" whenever the last record is not the one selected.
acct="$work/var/accounting.jsonl"
for _ in $(seq 50); do [ -s "$acct" ] && break; sleep 0.1; done
jq -e -s 'all(.[]; .v == 1 and (.queue_id | length) == 13)' "$acct" >/dev/null || fail "records without the schema version or a queue id: $(head -3 "$acct")"
bob=$(jq -r 'select(.event == "received" and .recipients == ["bob@dest.test"]) | .queue_id' "$acct" | head -1)
[ -n "$bob" ] || fail "no received record for the swaks message"
for _ in $(seq 100); do
  jq -e -s --arg id "$bob" 'any(.[]; .queue_id == $id and .event == "delivered")' "$acct" >/dev/null && break
  sleep 0.1
done
jq -e -s --arg id "$bob" 'any(.[]; .queue_id == $id and .event == "delivered" and .code == 250 and .ip == "127.0.0.1")' "$acct" >/dev/null \
  || fail "the swaks message has no delivered record: $(grep "$bob" "$acct")"
jq -e -s 'any(.[]; .event == "delivered" and .port == 2527)' "$acct" >/dev/null || fail "no delivery to aiosmtpd recorded"
jq -e -s 'any(.[]; .sender == "a@outside.test") | not' "$acct" >/dev/null || fail "the refused relay attempt has a record"
echo "accounting: $(wc -l < "$acct") records; the swaks message $bob received and delivered"

relay_run() { # relay_run BACKEND: smtp-source -> Sluice -> smtp-sink; prints the rates
  grep -q "delivery workers started backend=$1 " "$log" || fail "the daemon does not deliver over $1"
  echo "== relay ($1): $messages messages of 1 KiB over 20 sessions, smtp-source -> Sluice -> smtp-sink"
  local before start accepted_at end
  before=$(sink_count)
  start=$(date +%s.%N)
  smtp-source -s 20 -m "$messages" -l 1024 -f load@sender.test -t sink@dest.test 127.0.0.1:2525 || fail "smtp-source failed"
  accepted_at=$(date +%s.%N)
  wait_sink $((before + messages)) 300
  end=$(date +%s.%N)
  printf 'relay (%s): intake %.0f msg/s; delivered %.0f msg/s (all %d at smtp-sink after %.2f s)\n' "$1" \
    "$(echo "$messages / ($accepted_at - $start)" | bc -l)" "$(echo "$messages / ($end - $start)" | bc -l)" "$messages" "$(echo "$end - $start" | bc -l)"
}

relay_run io_uring

echo "== the same daemon configuration on epoll (delivery.io: epoll)"
kill -TERM "$daemon_pid"
for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
sed -i 's/^  io: auto/  io: epoll/' "$work/config.yaml"
grep -q '^  io: epoll' "$work/config.yaml" || fail "could not select epoll"
start_daemon
relay_run epoll

echo "interop: 13 passed, 0 failed"
