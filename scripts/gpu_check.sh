#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the course's GPU path on one lent GPU, in about 9 minutes.
#
#   bash scripts/gpu_check.sh wheels        # here, where pip reaches PyPI: the packages the GPU
#                                           # machine's image lacks, at requirements.lock's versions, into .whl/
#   bash scripts/gpu_check.sh [ARGS...]     # on the GPU machine: install .whl/ into /tmp/site, run the check
#   bash scripts/gpu_check.sh --cpu-smoke   # anywhere: every part on tiny shapes on the CPU (seconds)
#
# The GPU machine has its own Python (3.12, with torch, accelerate, safetensors, tokenizers, pandas,
# matplotlib...) and no package index, so the course's venv cannot travel; its other packages travel
# as wheels (benchmarks/README.md). ARGS go to benchmarks/gpu_check.py (--parts, --budget, --out).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_DIR=${WHEEL_DIR:-.whl}
# What the image lacks (or has at another version), by what needs it. Versions: requirements.lock.
COURSE="transformers trl datasets peft bitsandbytes dill multiprocess"
# Left behind, 10 MB that would not fit: debugpy (ipykernel's debugger) and jedi/parso (IPython's
# completion), both imported only when used.
NOTEBOOKS="nbclient nbformat jupyter-client jupyter-core ipykernel ipython traitlets pyzmq tornado
  comm matplotlib-inline nest-asyncio2 platformdirs fastjsonschema jsonschema
  jsonschema-specifications referencing rpds-py prompt-toolkit wcwidth pexpect ptyprocess
  stack-data executing asttokens pure-eval ipython-pygments-lexers"

if [ "${1:-}" = wheels ]; then
  py=${PYTHON:-.venv/bin/python}
  [ -x "$py" ] || py=python3
  mkdir -p "$WHEEL_DIR"
  if [ "$WHEEL_DIR" = .whl ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
    mkdir -p .git/info && echo '/.whl/' >>.git/info/exclude  # never committed; travels by `carry`
  fi
  pins=()
  for name in $COURSE $NOTEBOOKS; do
    pin=$(grep -iE "^${name//-/[-_]}==" requirements.lock | head -1 | cut -d' ' -f1)
    [ -n "$pin" ] || { echo "no pin for $name in requirements.lock" >&2; exit 1; }
    pins+=("$pin")
  done
  platforms=()  # pip matches manylinux_2_N exactly: name the ones wheels are built for
  for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$tag"); done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEEL_DIR" "${pins[@]}"
  # bitsandbytes ships a library per CUDA version (43 MB); the image's torch is built for CUDA 13
  "$py" benchmarks/gpu_check.py --trim-wheel "$WHEEL_DIR"/bitsandbytes-*.whl --keep-cuda 13
  wheels=$(du -cb "$WHEEL_DIR"/*.whl | tail -1 | cut -f1)
  tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
  echo "wheels $((wheels / 1048576)) MiB + tracked files $((tree / 1048576)) MiB: what travels must stay under 64 MiB"
  [ $((wheels + tree)) -lt $((64 * 1048576)) ] || { echo "too much to travel" >&2; exit 1; }
  exit 0
fi

PY=${PYTHON:-python3}
if compgen -G "$WHEEL_DIR/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEEL_DIR"/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # ftlearn from this checkout (no pip install -e)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py "$@"
