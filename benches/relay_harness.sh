# shellcheck shell=bash
# What relay_vs_postfix.sh and profile_sluice.sh share; they source it first thing (after
# `set -euo pipefail`). Sourced outside a namespace, it builds the release binary and runs the
# calling script again inside a new network namespace with only `lo` (needs root), so nothing
# reaches the network. Inside, it sets `repo`, `bin`, `work` (a temporary directory) and `pids`
# (processes to kill at exit), and defines:
#
#   join GROUP              run in the subshell that starts a process; a no-op unless the
#                           calling script redefines it (relay_vs_postfix.sh: cpuacct groups)
#   start_sink              smtp-sink on 127.0.0.1:2526, the smarthost of config.example.yaml
#   sink_count              transactions the sink has taken so far
#   wait_for_sink N SECONDS until the sink has N, or fail
#   start_sluice IO [SED [WRAPPER...]]
#                           Sluice on a copy of config.example.yaml with delivery.io = IO, the
#                           sed expression SED applied to it, started under WRAPPER (perf record
#                           ...); sets relay_pid (what was started) and sluice_pid (Sluice itself)
#   stop_sluice             SIGTERM to Sluice, then wait for what was started
#   quantile HISTOGRAM Q    upper bound (ms) of the bucket holding quantile Q of Sluice's metric

if [ -z "${IN_NETNS:-}" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "run as root (network namespace)" >&2; exit 1; }
  repo=$(cd "$(dirname "$0")/.." && pwd)
  (cd "$repo" && cargo build --release --quiet)
  exec unshare --net env IN_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/target/release/sluice"
work=$(mktemp -d)
pids=()

join() { :; }

sink_count() { tr '\r' '\n' < "$work/sink.out" | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2; }

start_sink() {
  : > "$work/sink.out"
  ( join harness; exec smtp-sink -u nobody -c 127.0.0.1:2526 1000 ) >> "$work/sink.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/2526) 2>/dev/null && return; sleep 0.1; done
  echo "smtp-sink did not start" >&2; exit 1
}

wait_for_sink() { # wait_for_sink N SECONDS
  local deadline=$((SECONDS + $2))
  while [ "$(sink_count || echo 0)" -lt "$1" ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "the sink has $(sink_count) of $1" >&2; exit 1; }
    sleep 0.05
  done
}

start_sluice() { # start_sluice IO [SED [WRAPPER...]]
  local io=$1 edit=${2:-}
  shift $(($# < 2 ? $# : 2))
  rm -rf "$work/sluice" && mkdir -p "$work/sluice"
  cp "$repo/config.example.yaml" "$repo/config.example.users" "$repo/config.example.keys" "$work/sluice/"
  sed -i "s/^  io: auto/  io: $io/" "$work/sluice/config.example.yaml"
  [ -z "$edit" ] || sed -i "$edit" "$work/sluice/config.example.yaml"
  ( cd "$work/sluice"; join relay; exec "$@" "$bin" run --config config.example.yaml ) 2> "$work/sluice.log" &
  relay_pid=$!
  pids+=("$relay_pid")
  for _ in $(seq 100); do grep -q " ready version=" "$work/sluice.log" && break; sleep 0.1; done
  grep -q " ready version=" "$work/sluice.log" || { echo "sluice did not start" >&2; cat "$work/sluice.log" >&2; exit 1; }
  sluice_pid=$relay_pid
  [ $# -eq 0 ] || sluice_pid=$(pgrep -P "$relay_pid" -x sluice)
}

stop_sluice() {
  kill -TERM "$sluice_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
}

quantile() { # quantile HISTOGRAM Q
  curl -sf http://127.0.0.1:9187/metrics | awk -v h="$1" -v q="$2" '
    index($1, h "_bucket{le=\"") == 1 { split($1, a, "\""); le[n] = a[2]; c[n++] = $2 }
    $1 == h "_count" { total = $2 }
    END { for (i = 0; i < n; i++) if (c[i] >= q * total) { print le[i] * 1000; exit } }'
}
