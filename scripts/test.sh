#!/usr/bin/env bash
# The whole test suite in one command, on a fresh Debian machine with Rust:
# installs the peers the tests use (Postfix's smtp-source/smtp-sink, swaks, strace, Python's
# aiosmtpd, ...),
# runs the Rust tests (unit and integration, over loopback), then the interop script, the
# systemd unit check, each fuzz target for 20 s, and (as root) the appliance image build and
# its QEMU boot test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=""
for cmd in smtp-source swaks strace curl bc pkill systemd-analyze; do
  command -v "$cmd" >/dev/null 2>&1 || need_install=yes
done
perl -MNet::SSLeay -MIO::Socket::SSL -MAuthen::SASL -e1 >/dev/null 2>&1 || need_install=yes
if [ -n "$need_install" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl \
    strace curl bc procps systemd >/dev/null
fi

python3 -c "import aiosmtpd" 2>/dev/null || python3 -m pip install --quiet aiosmtpd

cargo test --all-targets
# The delivery tests again with the workers on epoll (the run above uses io_uring).
SLUICE_TEST_IO=epoll cargo test --test it delivery
# The crash soak: 2,000 messages over 8 sessions, 10 kill -9 under load (prints its figures).
if ! cargo test --test it crash_soak -- --ignored --nocapture > target/crash-soak.log 2>&1; then
  cat target/crash-soak.log
  exit 1
fi
grep -E "^crash soak|^test result" target/crash-soak.log
cargo build --release
bash tests/interop/run.sh
bash systemd/check.sh
# Every fuzz target for a bounded time (longer runs: bash fuzz/run.sh SECONDS [TARGET...]).
bash fuzz/run.sh "${FUZZ_SECONDS:-20}"

# The appliance: building the image needs root (mmdebstrap, chroot); the boot test runs it
# under QEMU. Installing qemu-system-x86 replaces the machine's newer qemu-utils with
# Debian 12's, which still has qemu-img.
if [ "$(id -u)" -eq 0 ]; then
  if ! command -v mmdebstrap >/dev/null || ! command -v qemu-system-x86_64 >/dev/null || [ ! -f /usr/share/OVMF/OVMF_CODE_4M.fd ] \
    || ! command -v mcopy >/dev/null || ! command -v qemu-img >/dev/null; then
    apt-get update -qq
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      mmdebstrap dosfstools mtools fdisk e2fsprogs ovmf qemu-system-x86 >/dev/null
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
  fi
  bash image/build.sh
  bash image/boot-test.sh
else
  echo "test.sh: not root: the appliance image build and boot test were skipped" >&2
fi
