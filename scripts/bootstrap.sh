#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtualenv with riskstream and its dev extra,
# redis-server from apt when it is missing, and (with --test) the tools the deployment
# tests run: promtool (Debian's prometheus), docker-compose and chromium (the report
# screenshot test). Re-running it is cheap:
# the pip install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${RISKSTREAM_VENV:-.venv}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "bootstrap: need Python 3.11 or 3.12 (bytewax 0.21.1 has no wheels for others)" >&2; exit 1; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ "${1:-}" = "--test" ]; then
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} with apt-get" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
  # apt may start system services; riskstream starts its own servers on free ports.
  if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now redis-server prometheus >/dev/null 2>&1 || true
  fi
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.riskstream-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing riskstream into $VENV (about two minutes the first time)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # Exactly this torch: it is the local CPU wheel; a looser pin pulls GBs of CUDA packages.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# Compile the Numba kernels into their on-disk cache now (about 30 s the first time, 3 s
# after): the first live run and the tests then never wait for the compiler.
"$VENV/bin/riskstream" warm-up >/dev/null
