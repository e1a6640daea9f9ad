#!/usr/bin/env bash
# Checks the unit the way systemd would: `systemd-analyze verify` (syntax, directives,
# executables; the unit is pointed at the freshly built binary, since /usr/bin/sluice exists
# only once installed) and `systemd-analyze security`, whose exposure must rate OK or better.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/target/release/sluice"
[ -x "$bin" ] || (cd "$repo" && cargo build --release --quiet)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|/usr/bin/sluice|$bin|g" "$repo/systemd/sluice.service" > "$work/sluice.service"
out=$(systemd-analyze verify --man=no "$work/sluice.service" 2>&1 || true)
if [ -n "$out" ]; then
  echo "systemd-analyze verify complained:" >&2
  echo "$out" >&2
  exit 1
fi
# io_uring under the filter: @system-service must bring @aio with the io_uring calls, and the
# groups taken away must not hold them (if they ever did, the daemon falls back to epoll on
# its own; tests/it/delivery_io.rs covers that with a seccomp filter of its own).
allowed=$(systemd-analyze syscall-filter @system-service @aio)
denied=$(systemd-analyze syscall-filter @privileged @resources)
for call in io_uring_setup io_uring_enter io_uring_register; do
  echo "$allowed" | grep -qx "    $call" || { echo "$call is not in @system-service/@aio" >&2; exit 1; }
  if echo "$denied" | grep -qx "    $call"; then echo "$call is denied by ~@privileged @resources" >&2; exit 1; fi
done
rating=$(systemd-analyze security --offline=yes "$work/sluice.service" 2>&1 | grep 'Overall exposure level')
echo "systemd: verify passed; $rating"
echo "$rating" | grep -Eq ' (OK|SAFE) ' || { echo "exposure is worse than OK" >&2; exit 1; }
