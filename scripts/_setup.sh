# Shared set-up for scripts/demo and scripts/test: sourced, not run.
# Makes .venv with cnm installed (editable) plus the extras named in $CNM_EXTRAS,
# and the Debian packages named in $CNM_DEBS when their command is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "cnm builds namespaces, links and nftables rules: run this as root" >&2
  exit 1
fi

missing=()
for pair in ${CNM_DEBS:-}; do            # "command:package" pairs
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.cnm-installed-${CNM_EXTRAS:-none}"
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing cnm${CNM_EXTRAS:+ with $CNM_EXTRAS} into .venv (log: .venv/install.log)"
  if ! { .venv/bin/python -m pip install --upgrade pip &&
         .venv/bin/python -m pip install -e ".${CNM_EXTRAS:+[$CNM_EXTRAS]}"; } >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    exit 1
  fi
  touch "$stamp"
fi
PY=.venv/bin/python
