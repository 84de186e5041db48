#!/usr/bin/env bash
# Regenerate requirements.lock from requirements.txt: every package, transitive ones too, pinned.
# Usage: scripts/lock.sh   (or `make lock`). Needs uv (in requirements.txt, so in .venv).
#   FTLEARN_LOCK_TORCH=2.14.0 scripts/lock.sh   to move torch (default: the version locked now)
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-$( [ -x .venv/bin/uv ] && echo .venv/bin/uv || echo uv )}
# torch is locked like the rest, but its CUDA runtime (nvidia-*, cuda-*, triton) is not: the CPU
# build has none, and on a GPU machine the CUDA wheel brings the versions it was built against.
current=$(sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' requirements.lock 2>/dev/null || true)
TORCH=${FTLEARN_LOCK_TORCH:-${current:-2.13.0}}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "torch==$TORCH" >"$tmp/torch.txt"
# --universal: one lock for Linux, macOS, Windows and Colab's Python (markers where they differ)
# The current lock is the starting point: uv keeps its pins where requirements.txt still allows
# them, so adding a package moves no other (FTLEARN_LOCK_UPGRADE=1 re-resolves everything).
if [ -f requirements.lock ] && [ -z "${FTLEARN_LOCK_UPGRADE:-}" ]; then cp requirements.lock "$tmp/lock.txt"; fi
"$UV" pip compile requirements.txt --universal --python-version 3.11 \
  --constraint "$tmp/torch.txt" --no-header --no-annotate --quiet -o "$tmp/lock.txt"
{
  echo "# requirements.lock: every package of the course at an exact version. Generated; do not edit."
  echo "# Refresh: edit requirements.txt (floors) if needed, then \`make lock\`, \`make test\`, re-execute"
  echo "# the notebooks (\`ftlearn run-notebooks --in-place\`) and commit all three together."
  echo "# Made by scripts/lock.sh with $("$UV" --version) from requirements.txt; torch's CUDA runtime left out."
  grep -vE '^(nvidia-|cuda-|triton==)' "$tmp/lock.txt"
} >requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) packages pinned (torch $TORCH)"
