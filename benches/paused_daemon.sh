# shellcheck shell=bash
# What the intake benchmarks (intake_memory.sh, auth_attack.sh, queue_list_memory.sh) share;
# they source it after `set -euo pipefail`. It builds the release binary unless SLUICE_BIN
# names another build, and sets `repo`, `bin`, `work` (a temporary directory, removed at
# exit) and `port` (a free loopback port). It defines:
#
#   start_paused_daemon [YAML]  `sluice run` with delivery paused, one relay listener on
#                               $port, everything under $work, YAML (more top-level keys)
#                               appended to the config; sets `pid`; returns once the admin
#                               socket is there. The log goes to $work/daemon.log
#                               (SLUICE_LOG, default warn).
#   kib FIELD                   the daemon's /proc status FIELD (VmRSS, VmHWM) in KiB

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${SLUICE_BIN:-}" ]; then
  (cd "$repo" && cargo build --release --quiet)
fi
bin=${SLUICE_BIN:-$repo/target/release/sluice}
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start_paused_daemon() {
  cat > "$work/config.yaml" <<YAML
hostname: relay.test
spool: { path: $work/spool, min_free_space: 0 }
admin: { socket: $work/admin.sock }
metrics: { address: null }
dns: { nameservers: ["127.0.0.1:9"], timeout: 1s }
delivery: { paused: true }
sendmail: { socket: $work/sendmail.sock, maildrop: $work/maildrop }
listeners:
  - { address: "127.0.0.1:$port", mode: relay }
${1:-}
YAML
  SLUICE_LOG=${SLUICE_LOG:-warn} "$bin" run --config "$work/config.yaml" 2> "$work/daemon.log" &
  pid=$!
  for _ in $(seq 100); do [ -S "$work/admin.sock" ] && return 0; sleep 0.1; done
  echo "the daemon did not start:" >&2
  cat "$work/daemon.log" >&2
  return 1
}

kib() { awk -v k="$1" '$1 == k":" { print $2 }' "/proc/$pid/status"; }
