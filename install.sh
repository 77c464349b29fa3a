#!/usr/bin/env bash
# Installs k3p and what it needs on Debian/Ubuntu (run as root):
#   ./install.sh                      the default bundle: the core and every bundled plugin, and the host
#                                     packages a node needs (containerd, runc, CNI plugins, nftables, ...)
#   ./install.sh --without a,b        a trimmed bundle: leaves out the named plugins (names as --disable
#                                     takes them) and uninstalls them if an earlier run installed them
#   ./install.sh --test               also what the test suite needs (etcd, postgres, mariadb, test extras)
#   ./install.sh --dev                editable installs of this checkout (for development)
#   ./install.sh --wheels DIR         only build the bundle's wheels and their dependencies into DIR,
#                                     for an offline machine: pip install --no-index --find-links DIR k3p ...
# It never starts anything: run `k3p server` afterwards.
set -euo pipefail
cd "$(dirname "$0")"

with_tests=0
dev=0
without=""
wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --test) with_tests=1 ;;
    --dev) dev=1 ;;
    --without) [ $# -ge 2 ] || { echo "install.sh: --without needs a list of plugin names" >&2; exit 2; }
               without="$without,$2"; shift ;;
    --without=*) without="$without,${1#--without=}" ;;
    --wheels) [ $# -ge 2 ] || { echo "install.sh: --wheels needs a folder" >&2; exit 2; }
              wheels="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see ./install.sh --help)" >&2; exit 2 ;;
  esac
  shift
done

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: k3p needs Python 3.11 or newer ($python)" >&2
  exit 2
fi
# The bundle: every folder under plugins/ is a distribution; its entry point's name is the
# plugin name (--disable takes the same), read from its pyproject.toml.
declare -A folder_of=() dist_of=()
while read -r name dist dir; do
  folder_of[$name]=$dir
  dist_of[$name]=$dist
done < <("$python" - <<'PY'
import pathlib, tomllib
for pyproject in sorted(pathlib.Path("plugins").glob("*/pyproject.toml")):
    project = tomllib.loads(pyproject.read_text())["project"]
    for name in project.get("entry-points", {}).get("k3p.plugins", {}):
        print(name, project["name"], pyproject.parent)
PY
)
declare -A left_out=()
IFS=',' read -r -a asked <<< "$without"
for name in "${asked[@]}"; do
  name=$(echo "$name" | tr -d ' ')
  [ -n "$name" ] || continue
  if [ -z "${folder_of[$name]:-}" ]; then
    echo "install.sh: --without $name: no bundled plugin of that name (bundled: $(echo "${!folder_of[@]}" | tr ' ' '\n' | sort | tr '\n' ' '))" >&2
    exit 2
  fi
  left_out[$name]=1
done
targets=()
removed=()
for name in $(echo "${!folder_of[@]}" | tr ' ' '\n' | sort); do
  if [ -n "${left_out[$name]:-}" ]; then
    removed+=("${dist_of[$name]}")
  else
    targets+=("${folder_of[$name]}")
  fi
done

pip_args=(--quiet --disable-pip-version-check)
# Debian's own Python refuses system-wide pip installs (PEP 668): k3p is a system service here.
if "$python" -c 'import sys, sysconfig, os; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
  pip_args+=(--break-system-packages)
fi

if [ -n "$wheels" ]; then
  mkdir -p "$wheels"
  "$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheels" . "${targets[@]}"
  echo "wheels written to $wheels: install offline with" \
       "pip install --no-index --find-links $wheels k3p $(for n in "${!folder_of[@]}"; do [ -z "${left_out[$n]:-}" ] && printf '%s ' "${dist_of[$n]}"; done)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs system packages)" >&2
  exit 2
fi

packages=(iptables nftables iproute2)
if [ -n "${folder_of[containerd]:-}" ] && [ -z "${left_out[containerd]:-}" ]; then
  packages+=(containerd runc containernetworking-plugins busybox-static)
fi
if [ "$with_tests" = 1 ]; then
  packages+=(containerd runc containernetworking-plugins busybox-static etcd-server etcd-client wrk
             postgresql mariadb-server)
fi
# `k3p kubectl` needs a kubectl: one already on PATH is kept (a newer one is better, see
# README); otherwise Debian's, which is old but enough for everyday commands.
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # policy-rc.d: the database packages must not start their own servers; tests start theirs
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# A trimmed install keeps no trace of what it leaves out, also after a full one.
installed_removed=()
for dist in "${removed[@]}"; do
  "$python" -m pip show --quiet "$dist" >/dev/null 2>&1 && installed_removed+=("$dist")
done
if [ "${#installed_removed[@]}" -gt 0 ]; then
  "$python" -m pip uninstall "${pip_args[@]}" -y "${installed_removed[@]}"
fi

core="."
[ "$with_tests" = 1 ] && core=".[test]"
install=("$core" "${targets[@]}")
if [ "$dev" = 1 ]; then
  editable=()
  for t in "${install[@]}"; do editable+=(-e "$t"); done
  install=("${editable[@]}")
fi
"$python" -m pip install "${pip_args[@]}" "${install[@]}"
echo "k3p installed with plugins: $(for n in "${!folder_of[@]}"; do [ -z "${left_out[$n]:-}" ] && printf '%s ' "$n"; done)"
# the interpreter's own scripts folder first: with PYTHON=venv/bin/python, another k3p on PATH is not this one
scripts=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [ -x "$scripts/k3p" ]; then
  echo "k3p command: $scripts/k3p"
else
  echo "k3p command: $(command -v k3p || echo "$scripts/k3p")"
fi
