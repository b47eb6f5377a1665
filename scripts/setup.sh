#!/usr/bin/env bash
# Set up kdlab in ./.venv on a fresh machine. Safe to run again.
#
#   bash scripts/setup.sh          kdlab with its test tools, on the CPU build of torch where no torch is installed
#                                  yet (a GPU user's existing torch is kept)
#   bash scripts/setup.sh --all    also every optional extra the test suite exercises (vision: torchvision and timm;
#                                  text: transformers, tokenizers, datasets; postgres: the PostgreSQL driver)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="test"
if [ "${1:-}" = "--all" ]; then
  EXTRAS="test,vision,text,postgres"
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
quiet() { grep -v '^WARNING: Location' | grep -v 'wheel_obj\|^ *!!\|^ *$' || true; }
"$VPY" -m pip install -q --upgrade pip 2>&1 | quiet
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if ! "$PY" -c "import torch" 2>/dev/null; then
    if [[ "$EXTRAS" == *vision* ]]; then
      # torch and torchvision must come as a matched pair: PyTorch's CPU index first (small); where only PyPI is
      # reachable, PyPI's pair (its torchvision needs PyPI's torch, a CUDA build that also runs on a CPU).
      "$VPY" -m pip install -q --retries 0 --timeout 10 torch torchvision \
          --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
        || "$VPY" -m pip install -q torch torchvision 2>&1 | quiet
    else
      # No torch anywhere: take the CPU build. PyTorch's CPU index first (small download); where only PyPI is
      # reachable, torch==2.13.0 (the CPU build these machines carry locally).
      "$VPY" -m pip install -q --retries 0 --timeout 10 torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
        || "$VPY" -m pip install -q "torch==2.13.0" 2>&1 | quiet
    fi
  else
    # torch is installed system-wide (maybe a CUDA build): install the same version into the venv
    "$VPY" -m pip install -q "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" 2>&1 | quiet
  fi
fi
"$VPY" -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }
"$VPY" -m pip install -q -e ".[$EXTRAS]" 2>&1 | quiet
if [[ "$EXTRAS" == *vision* ]] && ! "$VPY" -c "import torchvision" 2>/dev/null; then
  # a torchvision built for another torch (e.g. PyPI's beside a CPU-only torch): take a matched pair from PyPI
  "$VPY" -m pip install -q --upgrade torch torchvision 2>&1 | quiet
  "$VPY" -c "import torchvision" || { echo "setup: torchvision does not import with this torch" >&2; exit 1; }
fi
.venv/bin/kdlab --version
