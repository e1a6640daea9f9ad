#!/usr/bin/env bash
# Password guessing under load (issue 15): ATTEMPTS (default 300) parallel AUTH attempts with
# wrong passwords from 3 addresses (127.0.0.2-4, outside trusted_networks), and meanwhile a
# real user's login from 127.0.0.9; prints how the guesses were answered, how many passwords
# the daemon checked, the real login's time and the daemon's peak RSS. Users are stored as
# `sluice passwd` stores them (argon2id, ~19 MiB and a core per check). SLUICE_BIN runs
# another build (an older one, for a before). Usage: bash benches/auth_attack.sh [ATTEMPTS]
set -euo pipefail
attempts=${1:-300}
source "$(dirname "$0")/paused_daemon.sh"
echo "the right one" | "$bin" passwd bob > "$work/users"
for i in 0 1 2 3 4 5 6; do echo "secret$i" | "$bin" passwd "user$i" >> "$work/users"; done
SLUICE_LOG=info start_paused_daemon "auth: { users_file: $work/users, plaintext_networks: [\"127.0.0.0/8\"] }"
status=0
python3 "$repo/benches/auth_attack.py" "$port" "$pid" "$attempts" bob "the right one" 127.0.0.2 127.0.0.3 127.0.0.4 || status=$?
echo "auth attack: passwords checked and refused by the daemon: $(grep -c 'authentication failed' "$work/daemon.log" || true)"
exit $status
