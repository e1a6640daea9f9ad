#!/usr/bin/env bash
# Boots target/image/sluice.raw under QEMU (TCG, OVMF, user networking) and checks the
# appliance end to end:
#   1. SMTP greeting and EHLO from the appliance (port 25 forwarded to 127.0.0.1:2625);
#   2. a message sent to it is relayed to a sink on the host (the guest reaches the host's
#      loopback as 10.0.2.2; a SLUICE-SEED disk points the smarthost there);
#   3. the metrics endpoint answers (forwarded to 127.0.0.1:9287), and /healthz and /readyz
#      say 200 with every check ok (after the power loss too);
#   +. the unit restarts a daemon killed by SIGKILL, and a message given to sendmail while
#      the daemon is down waits in the maildrop and is delivered (first boot, see the seed);
#   4. power loss: with the sink down, messages are accepted, QEMU is SIGKILLed right after
#      the last 250, the VM boots again, and once the sink is back every accepted message
#      arrives (this catches a missing fsync, which kill -9 of the daemon cannot).
# Prints the boot-to-greeting time; on failure, the serial console log.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
image="$repo/target/image/sluice.raw"
smtp_port=2625
metrics_port=9287
sink_port=${SINK_PORT:-2626}
deadline_s=${BOOT_DEADLINE:-600}
work=$(mktemp -d)
qemu_pid=""
sink_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "boot-test: FAIL: $*" >&2
  echo "---- serial console (last 60 lines) ----" >&2
  tail -n 60 "$work"/serial.*.log >&2 2>/dev/null || true
  exit 1
}

for tool in qemu-system-x86_64 smtp-sink swaks curl mkfs.vfat mcopy; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
[ -f "$image" ] || fail "no image at $image (run image/build.sh first)"
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd
[ -f "$ovmf_code" ] || fail "OVMF is not installed (apt-get install ovmf)"

cp --sparse=always "$image" "$work/disk.raw"
# Like writing the image to a bigger disk: the root grows to fill it on first boot.
truncate -s 6G "$work/disk.raw"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"

# The seed: the appliance's default config, with the smarthost on the host.
sed -e '/^delivery:/a\  smarthost: "[10.0.2.2]:'"$sink_port"'"\n  retry: [1s]' "$repo/image/config.yaml" > "$work/config.yaml"
grep -q "10.0.2.2" "$work/config.yaml" || fail "could not write the seed config"
mkfs.vfat -C -n SLUICE-SEED "$work/seed.img" 4096 >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -i "$work/seed.img" "$work/config.yaml" ::/config.yaml
# The daemon's log on the serial console too, so a failure shows why (and the checks below
# read it). And, on the first boot only (markers in /var/lib, synced so a power loss keeps
# them): 3 s after the daemon is READY it gets SIGKILL, which the unit must answer with a
# restart; before that restart, a cron-like user (nobody) hands a message to sendmail while
# no daemon answers, which must wait in the maildrop and be delivered once the daemon is
# back. (The unit's device policy keeps its own commands off /dev/console: the transient
# unit that kills says so instead.)
cat > "$work/sluice.service.conf" <<'UNIT'
[Service]
StandardError=journal+console
ExecStartPre=+/bin/sh -c 'if [ -e /var/lib/boot-test-killed ] && [ ! -e /var/lib/boot-test-dropped ]; then touch /var/lib/boot-test-dropped; sync; printf "Subject: maildrop\\n\\nsent while the daemon was down\\n" | systemd-run --quiet --pipe --wait --uid=nobody --gid=nogroup /usr/sbin/sendmail -f cron@host.test dropped@dest.test || true; fi'
ExecStartPost=+/bin/sh -c 'if [ ! -e /var/lib/boot-test-killed ]; then touch /var/lib/boot-test-killed; sync; systemd-run --quiet --on-active=3 --unit=boot-test-kill /bin/sh -c "echo boot-test: SIGKILL to sluice >/dev/console; systemctl kill --signal=KILL sluice.service"; fi'
UNIT
MTOOLS_SKIP_CHECK=1 mcopy -i "$work/seed.img" "$work/sluice.service.conf" ::/sluice.service.conf

boots=0
boot() {
  boots=$((boots + 1))
  qemu-system-x86_64 -accel tcg -machine q35 -m 1024 -smp 2 -display none \
    -drive if=pflash,format=raw,readonly=on,file="$ovmf_code" \
    -drive if=pflash,format=raw,file="$work/vars.fd" \
    -drive file="$work/disk.raw",format=raw,if=virtio \
    -drive file="$work/seed.img",format=raw,if=virtio \
    -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$smtp_port-:25,hostfwd=tcp:127.0.0.1:$metrics_port-:9187 \
    -serial file:"$work/serial.$boots.log" &
  qemu_pid=$!
}

greeting() { # prints the 220 line once the appliance answers
  exec 3<>/dev/tcp/127.0.0.1/$smtp_port || return 1
  local line
  IFS= read -r -t 5 line <&3 || { exec 3<&-; return 1; }
  exec 3<&-
  case "$line" in 220*) echo "$line" ;; *) return 1 ;; esac
}

wait_greeting() {
  local start=$SECONDS line
  while [ $((SECONDS - start)) -lt "$deadline_s" ]; do
    kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited"
    if line=$(greeting 2>/dev/null); then
      echo "boot $boots: SMTP greeting after $((SECONDS - start)) s: $line"
      return 0
    fi
    sleep 2
  done
  fail "no SMTP greeting within $deadline_s s"
}

sink_count() {
  tr '\r' '\n' < "$work/sink.out" 2>/dev/null | grep -o 'mesg=[0-9]*' | tail -n 1 | cut -d= -f2
}
start_sink() {
  smtp-sink -u nobody -c 127.0.0.1:$sink_port 100 >> "$work/sink.out" 2>&1 &
  sink_pid=$!
}
wait_sink() { # wait_sink N SECONDS
  local until=$((SECONDS + $2))
  while [ "$(sink_count || echo 0)" != "$1" ]; do
    [ "$SECONDS" -lt "$until" ] || fail "the sink has $(sink_count || echo 0) of $1 messages"
    sleep 1
  done
}
send() { # send TO
  swaks --server 127.0.0.1:$smtp_port --from test@host.test --to "$1" --h-Subject "appliance $1" --timeout 60 > "$work/swaks.out" 2>&1 \
    || { cat "$work/swaks.out" >&2; return 1; }
}

serial_count() { # serial_count TEXT: lines of this boot's console holding TEXT
  grep -c -F "$1" "$work/serial.$boots.log" 2>/dev/null || true
}
wait_serial() { # wait_serial TEXT COUNT SECONDS
  local until=$((SECONDS + $3))
  while [ "$(serial_count "$1")" -lt "$2" ]; do
    [ "$SECONDS" -lt "$until" ] || fail "the console shows '$1' $(serial_count "$1") times, not $2"
    sleep 1
  done
}

echo "== boot 1"
start_sink
boot
wait_greeting
echo "== SIGKILL: the unit restarts the daemon; sendmail meanwhile writes to the maildrop"
wait_serial "boot-test: SIGKILL to sluice" 1 120
wait_serial " ready version=" 2 120
wait_serial "taken in from the maildrop" 1 60
grep -a "taken in from the maildrop" "$work/serial.$boots.log" | grep -q "uid=65534" || fail "the maildrop message was not nobody's"
wait_greeting
echo "the daemon was restarted after SIGKILL"
ehlo=$(swaks --server 127.0.0.1:$smtp_port --quit-after EHLO --timeout 60 2>&1 || true)
echo "$ehlo" | grep -q "250-PIPELINING" || fail "no EHLO answer: $ehlo"
echo "== relay to the host's sink"
send one@dest.test || fail "swaks could not send"
# The message sent and the one sendmail left in the maildrop while the daemon was down.
wait_sink 2 120
echo "the maildrop message was delivered after the restart"
echo "== metrics"
# Read whole first: with pipefail, `curl | grep -q` fails when grep stops reading early.
metrics=$(curl -sf "http://127.0.0.1:$metrics_port/metrics") || fail "metrics endpoint"
grep -q "sluice_intake_messages_accepted_total" <<<"$metrics" || fail "metrics endpoint lacks the intake counters"
# The unit's SystemCallFilter must leave io_uring to the delivery workers (the epoll
# fallback itself is tested with a seccomp filter in tests/it/delivery_io.rs).
grep -q 'sluice_delivery_io_backend{backend="io_uring"} 1' <<<"$metrics" || fail "delivery is not on io_uring under the unit's system call filter"
echo "delivery runs on io_uring under the unit's system call filter"
health_ok() {
  local path body
  for path in /healthz /readyz; do
    body=$(curl -sf "http://127.0.0.1:$metrics_port$path") || fail "$path is not 200: $(curl -s "http://127.0.0.1:$metrics_port$path")"
    grep -q '"status":"ok","spool":"ok","listeners_down":\[\]' <<<"$body" || fail "$path: $body"
  done
  echo "boot $boots: /healthz and /readyz: $body"
}
health_ok

echo "== power loss: sink down, 5 messages accepted, QEMU killed after the last 250"
kill "$sink_pid" && wait "$sink_pid" 2>/dev/null || true
sink_pid=""
for i in 1 2 3 4 5; do
  send "lost$i@dest.test" || fail "message $i not accepted"
done
kill -9 "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=""
echo "== boot 2"
start_sink
boot
wait_greeting
# A new sink counts from zero.
wait_sink 5 300
health_ok
echo "boot-test: all 5 messages accepted before the power loss arrived after the reboot"
kill -9 "$qemu_pid" 2>/dev/null || true
echo "boot-test: passed"
