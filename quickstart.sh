#!/usr/bin/env bash
# stackbed quickstart: set everything up on a fresh Debian 12 machine, then run something.
#   ./quickstart.sh setup   Debian packages, .venv, libvirt daemons, /dev/kvm, guest image
#   ./quickstart.sh bench   setup, then the default experiment (comparison table at the end)
#   ./quickstart.sh test    setup, then the test suite (boots real VMs)
# Every step is idempotent: a second run only checks. Needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
APT_PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
  pkg-config gcc python3-dev python3-venv mmdebstrap cpio e2fsprogs openssh-client iproute2
  iperf3 ethtool tcpdump ca-certificates chromium)

say() { printf '\033[1m== %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=CI,STACKBED_MIRROR,STACKBED_APT_SOURCES,STACKBED_ACCEL "$0" "$@"
fi

setup_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

setup_venv() {
  local stamp="$VENV/.stackbed-deps" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "creating the virtualenv .venv (libvirt-python compiles: about a minute)"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "$ROOT[dev]"
    echo "$want" > "$stamp"
  fi
}

setup_junit_schema() {
  # The published JUnit schema that pytest's own tests validate against (Jenkins' junit-10.xsd,
  # MIT), from pytest's source distribution on PyPI: the nightly's JUnit output is checked
  # with it (tests/unit/test_nightly_junit.py). Fetched once per virtualenv.
  local xsd="$VENV/share/stackbed/junit-10.xsd" ver tmp
  [ -s "$xsd" ] && return 0
  say "JUnit schema (from pytest's source distribution)"
  ver=$("$VENV/bin/python" -c 'import pytest; print(pytest.__version__)')
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps --no-binary :all: "pytest==$ver" -d "$tmp"
  tar -xzf "$tmp/pytest-$ver.tar.gz" -C "$tmp" "pytest-$ver/testing/example_scripts/junit-10.xsd"
  mkdir -p "$(dirname "$xsd")"
  cp "$tmp/pytest-$ver/testing/example_scripts/junit-10.xsd" "$xsd"
  rm -rf "$tmp"
}

setup_host() {
  say "libvirt daemons and /dev/kvm"
  "$VENV/bin/python" - <<'PY'
import sys; sys.path.insert(0, ".")
from host.daemons import ensure_daemons, fix_kvm_device
started = ensure_daemons()
print("started:", ", ".join(started) or "none needed", "| /dev/kvm fixed:", fix_kvm_device())
PY
}

setup_image() {
  say "guest image"
  "$VENV/bin/invoke" image.build
}

setup() {
  setup_packages
  setup_venv
  setup_junit_schema
  setup_host
  setup_image
  "$VENV/bin/invoke" doctor
}

case "${1:-}" in
  setup) setup ;;
  bench) setup; shift; say "default experiment"; exec "$VENV/bin/invoke" bench "$@" ;;
  test) setup; shift; say "test suite"; exec "$VENV/bin/invoke" test "$@" ;;
  *) echo "usage: $0 setup|bench|test" >&2; exit 2 ;;
esac
