#!/usr/bin/env bash
# Installs the Debian packages the Python dependencies need to build, only when
# they are missing. py-libp2p pins fastecdsa, which compiles against GMP.
set -euo pipefail
need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# iproute2: `ip netns` for the mDNS test (tests/integration/test_mdns.py)
for pkg in gcc libgmp-dev python3-venv python3-dev iproute2; do
  have "$pkg" || need+=("$pkg")
done
for pkg in "$@"; do
  have "$pkg" || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages: ${need[*]}" >&2
  echo "hint: run as root, or: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
