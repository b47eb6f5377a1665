#!/usr/bin/env bash
# Set up kdlab in ./.venv on a fresh machine: the CPU build of torch where no torch is installed yet (a GPU user's
# existing torch is kept), then kdlab itself with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if ! "$PY" -c "import torch" 2>/dev/null; then
    # No torch anywhere: take the CPU build. PyTorch's CPU index first (small download); where only PyPI is
    # reachable, torch==2.13.0 (the CPU build these machines carry locally).
    "$VPY" -m pip install -q --retries 0 --timeout 10 torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
      || "$VPY" -m pip install -q "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
  else
    # torch is installed system-wide (maybe a CUDA build): install the same version into the venv
    "$VPY" -m pip install -q "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" 2>&1 | grep -v '^WARNING: Location' || true
  fi
fi
"$VPY" -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }
"$VPY" -m pip install -q -e ".[test]" 2>&1 | grep -v '^WARNING: Location' | grep -v 'wheel_obj\|^ *!!\|^ *$' || true
.venv/bin/kdlab --version
