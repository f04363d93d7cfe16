# Shared by run.sh and test.sh: make a virtual environment in .venv with radflow installed.
# Sourced, not executed. Needs Debian's python3 (3.11+) and, on a fresh machine, root or sudo.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  missing=""
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
  if [ -n "$missing" ]; then
    echo "radflow: installing Debian packages:$missing"
    as_root apt-get update -q
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q $missing
  fi
}
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then apt_install python3-venv; fi
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
VPY="$ROOT/.venv/bin/python"
install_radflow() {  # $1: extras, e.g. "[test]"; more arguments: extras that include $1
  for extras in "$@"; do  # installed already (with these extras or more), pyproject unchanged
    stamp=".venv/.installed$extras"
    if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then return 0; fi
  done
  "$VPY" -m pip install -q --upgrade pip
  "$VPY" -m pip install -q -e ".$1"
  touch ".venv/.installed$1"
}
