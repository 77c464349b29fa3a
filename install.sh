#!/usr/bin/env bash
# Installs k3p and what it needs on Debian/Ubuntu (run as root):
#   ./install.sh           runtime: containerd, runc, CNI plugins, nftables, ... and k3p itself
#   ./install.sh --test    also what the test suite needs (etcd, busybox-static, kubectl check, test extras)
# It never starts anything: run `k3p server` afterwards.
set -euo pipefail
cd "$(dirname "$0")"

with_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs system packages)" >&2
  exit 2
fi

packages=(containerd runc containernetworking-plugins iptables nftables iproute2 busybox-static)
if [ "$with_tests" = 1 ]; then
  packages+=(etcd-server etcd-client wrk)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: k3p needs Python 3.11 or newer ($python)" >&2
  exit 2
fi
pip_args=(--quiet --disable-pip-version-check)
# Debian's own Python refuses system-wide pip installs (PEP 668): k3p is a system service here.
if "$python" -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  pip_args+=(--break-system-packages)
fi
extras=""
[ "$with_tests" = 1 ] && extras="[test]"
"$python" -m pip install "${pip_args[@]}" -e ".${extras}"
echo "k3p installed: $(command -v k3p || echo "$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/k3p")"
