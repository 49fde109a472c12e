#!/usr/bin/env bash
# One place for every piece of machine set-up vcheck and its test rig need.
# Idempotent: a second run installs nothing and takes about a second.
# Usage: scripts/setup.sh            (as root; Debian 12 or similar)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root (vcheck reads /proc of other users, loads BPF, starts KVM guests)" >&2
  exit 1
fi

# --- system packages -------------------------------------------------------------------
# bcc comes from the distribution (python3-bpfcc); the PyPI package named "bcc" is unrelated.
PACKAGES=(
  python3 python3-venv python3-bpfcc bpftool linux-headers-amd64   # BPF engine
  clang libbpf-dev libbpf1                                          # CO-RE objects built here, loaded by libbpf
  bpftrace libbpf-tools sysstat fio                                 # reference tools for cross-checks
  qemu-system-x86                                                   # hypervisor rig
  containerd runc busybox-static                                    # container rig
  python3-grpcio gcc libc6-dev                                      # CRI client; tinykvm and the BPF header test
  prometheus-node-exporter                                          # textfile collector test
  iproute2                                                          # network rig: ip netns, veth, nstat, ss
  prometheus ansible-core openssh-server openssh-client             # fleet: rules (promtool), playbook over sshd
  chromium chromium-driver python3-selenium                         # HTML report test: a real headless browser
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Never let package scripts start services on the build machine: the rig starts its own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- kernel headers for bcc ------------------------------------------------------------
# bcc compiles at run time against /lib/modules/$(uname -r)/build. Custom kernels ship none;
# Debian's newest linux-headers work for tracepoint-only programs.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$hdr" ] && [ -n "$common" ]; then
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
    log "linked kernel headers $hdr -> $kdir/build"
  else
    log "WARNING: no kernel headers found under /usr/src; BPF collectors will be unavailable"
  fi
fi

# --- tracefs / debugfs -----------------------------------------------------------------
mountpoint -q /sys/kernel/tracing || { mount -t tracefs nodev /sys/kernel/tracing && log "mounted tracefs"; }
mountpoint -q /sys/kernel/debug || { mount -t debugfs nodev /sys/kernel/debug 2>/dev/null && log "mounted debugfs" || true; }

# --- python environment ----------------------------------------------------------------
# System python with system site-packages, so the distribution's bcc is importable.
VENV=${VCHECK_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.vcheck-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing vcheck into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]'   # pyproject.toml: deps and the test extra
  touch "$stamp"
fi

# --- CO-RE objects of bpf/*.c ------------------------------------------------------------
# Compiled once here and loaded by libbpf at run time (no compiler, no bcc in the run);
# rebuilt only when a source or header changed. A program without an object uses bcc.
"$VENV/bin/python" -m vcheck.bpf_build || log "WARNING: some CO-RE objects did not build; those programs use bcc"
