#!/usr/bin/env bash
# End to end, Sluice against Postfix on the same machine and load (issue 7):
#   smtp-source (20 sessions) -> relay (durable queue, fsync before 250) -> smtp-sink
# for 1 KiB x 1 recipient, 1 KiB x 10 recipients (one domain) and 50 KiB x 1 recipient;
# Sluice on io_uring and on epoll, then Postfix 3.7 as a relay to the same sink. Prints, per
# run, intake msg/s, delivered msg/s (until the sink has every message) and CPU per message of
# the relay and of the harness, each measured in its own cpuacct cgroup (Postfix is many
# processes); then medians and the Sluice/Postfix ratio.
#
# Everything runs in a network namespace with only `lo`, so neither relay reaches the
# network; Postfix runs with smtpd_peername_lookup=no and DNS disabled (Sluice makes no
# lookups with a smarthost either). Needs root (namespace, cgroups, a Postfix instance).
#
# For Sluice it also reads, from its metrics, the bucket bounds of the median and the 99th
# percentile of end of data -> reply (the 250, sent once the message is durable).
#
#   bash benches/relay_vs_postfix.sh              # 10,000 messages per run, 3 runs per case
#   MESSAGES=5000 RUNS=1 bash benches/relay_vs_postfix.sh
#   CASES=1k-1rcpt RELAYS="sluice-epoll postfix" bash benches/relay_vs_postfix.sh
set -euo pipefail
# shellcheck source=benches/relay_harness.sh
source "$(dirname "$0")/relay_harness.sh"

messages=${MESSAGES:-10000}
runs=${RUNS:-3}
chmod 0755 "$work" # Postfix's processes run as postfix and must reach its queue in here
cg=/sys/fs/cgroup/cpuacct/sluice-bench-$$
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true
  for g in relay harness; do
    [ -d "$cg/$g" ] && { cat "$cg/$g/cgroup.procs" 2>/dev/null | xargs -r kill -9 2>/dev/null || true; rmdir "$cg/$g" 2>/dev/null || true; }
  done
  rmdir "$cg" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$cg/relay" "$cg/harness"
usage() { cat "$cg/$1/cpuacct.usage"; } # nanoseconds of CPU, user + system, of the group
join() { echo "$BASHPID" > "$cg/$1/cgroup.procs"; } # this (sub)shell, and what it starts next, into a group

start_postfix() {
  local pf="$work/postfix"
  rm -rf "$pf" && mkdir -p "$pf/etc" "$pf/spool" "$pf/data"
  cp /etc/postfix/master.cf "$pf/etc/master.cf"
  # smtpd on 2525 (not chrooted), everything else as shipped.
  sed -i 's/^smtp      inet  n       -       y       -       -       smtpd$/127.0.0.1:2525 inet n - n - - smtpd/' "$pf/etc/master.cf"
  grep -q '^127.0.0.1:2525 inet' "$pf/etc/master.cf" || { echo "could not set Postfix's port" >&2; exit 1; }
  sed -i 's/^\(smtp      unix  -       -       \)y/\1n/' "$pf/etc/master.cf"
  cat > "$pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/spool
data_directory = $pf/data
mail_owner = postfix
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:2526
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
alias_maps =
alias_database =
default_process_limit = 100
smtpd_client_connection_count_limit = 0
smtp_destination_concurrency_limit = 20
smtpd_recipient_restrictions = permit_mynetworks, reject
maillog_file_prefixes = $work
maillog_file = $pf/maillog
EOF
  chown postfix "$pf/data"
  # Early errors go to syslog only: run with a listener on /dev/log to see them.
  ( join relay; postfix -c "$pf/etc" start ) >/dev/null 2>&1 || { echo "postfix did not start" >&2; exit 1; }
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/2525) 2>/dev/null && return; sleep 0.1; done
  echo "postfix did not start" >&2; exit 1
}

stop_relay() { # stop_relay NAME
  if [ "$1" = postfix ]; then postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true; sleep 1
  else stop_sluice; fi
}

# run RELAY CASE SIZE RCPTS: one measured run; appends a line to results.
run() {
  local relay=$1 case=$2 size=$3 rcpts=$4
  start_sink
  case $relay in
    postfix) start_postfix ;;
    sluice-uring) start_sluice uring ;;
    sluice-epoll) start_sluice epoll ;;
  esac
  local expected=$((messages * rcpts))
  local relay0 harness0 t0 t1 t2
  relay0=$(usage relay); harness0=$(usage harness)
  t0=$(date +%s.%N)
  ( join harness; exec smtp-source -s 20 -m "$messages" -l "$size" -r "$rcpts" -f load@sender.test -t sink@dest.test 127.0.0.1:2525 )
  t1=$(date +%s.%N)
  # smtp-sink counts transactions: with 10 recipients of one domain each message is one.
  wait_for_sink "$messages" 600
  t2=$(date +%s.%N)
  local relay_ns=$(( $(usage relay) - relay0 )) harness_ns=$(( $(usage harness) - harness0 ))
  local p50=nan p99=nan
  if [ "$relay" != postfix ]; then
    p50=$(quantile sluice_intake_end_of_data_to_reply_seconds 0.5)
    p99=$(quantile sluice_intake_end_of_data_to_reply_seconds 0.99)
  fi
  stop_relay "$relay"
  kill "${pids[0]}" 2>/dev/null || true
  pids=()
  local line
  line=$(echo "$relay $case $messages $t0 $t1 $t2 $relay_ns $harness_ns $p50 $p99" | awk '{
    printf "%s %s intake=%.0f delivered=%.0f relay_us=%.0f harness_us=%.0f p50_ms=%s p99_ms=%s\n", $1, $2, $3/($5-$4), $3/($6-$4), $7/1000/$3, $8/1000/$3, $9, $10 }')
  echo "$line" | tee -a "$work/results"
}

for spec in "1k-1rcpt 1024 1" "1k-10rcpt 1024 10" "50k-1rcpt 51200 1"; do
  read -r case size rcpts <<<"$spec"
  case " ${CASES:-$case} " in *" $case "*) ;; *) continue ;; esac
  for r in $(seq "$runs"); do
    for relay in ${RELAYS:-sluice-uring sluice-epoll postfix}; do
      run "$relay" "$case" "$size" "$rcpts"
    done
  done
done

echo
echo "medians of $runs run(s), $messages messages per run, 20 sessions:"
python3 - "$work/results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    relay, case, *kv = line.split()
    rows[(case, relay)].append({k: float(v) for k, v in (x.split("=") for x in kv)})
cases = sorted({c for c, _ in rows}, key=lambda c: ["1k-1rcpt", "1k-10rcpt", "50k-1rcpt"].index(c))
print(f"| case | relay | intake msg/s | delivered msg/s | relay CPU us/msg | harness CPU us/msg | end of data -> 250, p50 / p99 (ms, bucket bound) | delivered vs Postfix |")
print("|---|---|---|---|---|---|---|---|")
for c in cases:
    med = {r: {k: statistics.median(x[k] for x in rows[(c, r)]) for k in rows[(c, r)][0]} for (cc, r) in rows if cc == c}
    base = med["postfix"]["delivered"] if "postfix" in med else float("nan")
    for r in ("sluice-uring", "sluice-epoll", "postfix"):
        if r not in med:
            continue
        m = med[r]
        lat = "-" if r == "postfix" else f"{m['p50_ms']:g} / {m['p99_ms']:g}"
        ratio = f"{m['delivered'] / base:.2f}x" if base == base else "-"
        print(f"| {c} | {r} | {m['intake']:.0f} | {m['delivered']:.0f} | {m['relay_us']:.0f} | {m['harness_us']:.0f} | {lat} | {ratio} |")
PY
