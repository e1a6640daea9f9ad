#!/usr/bin/env bash
# The whole test suite in one command, on a fresh Debian machine with Rust:
# installs the peers the tests use (Postfix's smtp-source/smtp-sink, swaks, strace, Python's
# aiosmtpd, redis-server, ...),
# runs the Rust tests (unit and integration, over loopback), then the interop script, the
# systemd unit check, each fuzz target for 20 s, and (as root) the appliance image build and
# its QEMU boot test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage is announced and timed; the times are printed at the end (and on failure, the
# stage that failed is the last one announced).
started=$SECONDS
stage_name=""
stage_start=$SECONDS
timings=""
stage() {
  [ -z "$stage_name" ] || timings+=$(printf '%6d s  %s' $((SECONDS - stage_start)) "$stage_name")$'\n'
  stage_name=$1
  stage_start=$SECONDS
  echo
  echo "===== test.sh: $1"
}
trap '[ -z "$stage_name" ] || echo "===== test.sh: failed in: $stage_name (after $((SECONDS - started)) s)" >&2' ERR

stage "installing the test peers"
need_install=""
for cmd in smtp-source swaks strace curl bc pkill systemd-analyze promtool prlimit jq openssl redis-server; do
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
    strace curl bc procps systemd prometheus util-linux jq openssl redis-server >/dev/null
fi

# aiosmtpd: on Debian's own Python from Debian's package (that Python refuses pip installs,
# PEP 668); on another Python first in PATH (pyenv's, say), from PyPI.
if ! python3 -c "import aiosmtpd" 2>/dev/null; then
  if [ "$(command -v python3)" = /usr/bin/python3 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-aiosmtpd >/dev/null
  else
    python3 -m pip install --quiet aiosmtpd
  fi
fi

# dkimpy, the DKIM verifier of the signing tests: Debian's package, for Debian's Python
# (the tests run /usr/bin/python3 by path); it brings dnspython and PyNaCl (Ed25519).
if ! /usr/bin/python3 -c "import dkim, dns.query, nacl" 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dkim python3-nacl python3-dnspython >/dev/null
fi

stage "Prometheus alert rules (promtool check and test)"
promtool check rules contrib/prometheus/sluice-alerts.yaml
promtool test rules contrib/prometheus/sluice-alerts.test.yaml
# The dashboard's queries, checked as PromQL by the same parser (as recording rules).
mkdir -p target
python3 - contrib/grafana/sluice-dashboard.json > target/dashboard-queries.yaml <<'PY'
import json, sys
panels = json.load(open(sys.argv[1]))["panels"]
exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    print(f"      - record: dashboard:query{i}\n        expr: {json.dumps(e)}")
PY
promtool check rules target/dashboard-queries.yaml

stage "cargo test (unit and integration; delivery on io_uring)"
cargo test --all-targets
stage "the delivery tests again with the workers on epoll"
SLUICE_TEST_IO=epoll cargo test --test it delivery
stage "crash soak: 2,000 messages over 8 sessions, 10 kill -9 under load"
if ! cargo test --test it crash_soak -- --ignored --nocapture > target/crash-soak.log 2>&1; then
  cat target/crash-soak.log
  exit 1
fi
grep -E "^crash soak|^test result" target/crash-soak.log
stage "release build and interop with swaks, smtp-source, smtp-sink, aiosmtpd"
cargo build --release
bash tests/interop/run.sh
stage "systemd unit check"
bash systemd/check.sh
stage "fuzzing: every target for ${FUZZ_SECONDS:-20} s"
# Longer runs: bash fuzz/run.sh SECONDS [TARGET...].
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
  stage "appliance image build"
  bash image/build.sh
  stage "appliance boot test under QEMU"
  bash image/boot-test.sh
else
  echo "test.sh: not root: the appliance image build and boot test were skipped" >&2
fi
stage "done"
echo "$timings"
echo "test.sh: passed in $((SECONDS - started)) s"

