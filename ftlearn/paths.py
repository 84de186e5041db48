"""Where the course keeps its shipped data, its training outputs and its cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Where the course lives: the first cell of every notebook clones it on Colab, and README.md names
# it. tests/test_notebooks.py checks that both say exactly this.
REPO_URL = "https://github.com/ftlearn/ftlearn"
# Shipped, committed artifacts: the synthetic world and the tiny models.
DATA_DIR = Path(os.environ.get("FTLEARN_DATA_DIR", REPO_ROOT / "data"))
WORLD_DIR = DATA_DIR / "world"
MODELS_DIR = DATA_DIR / "models"
# Training outputs: git-ignored, safe to delete.
RUNS_DIR = Path(os.environ.get("FTLEARN_RUNS_DIR", REPO_ROOT / "runs"))


def cache_dir() -> Path:
    """Per-user cache for converted models (the GGUF-to-safetensors copy of SmolLM2)."""
    root = os.environ.get("FTLEARN_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    path = base / "ftlearn" if not os.environ.get("FTLEARN_CACHE_DIR") else base
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir(name: str, fresh: bool = False) -> Path:
    """A folder under runs/ for one notebook's outputs; `fresh=True` empties it first.

    Training runs want `fresh=True`: a checkpoint left by an earlier run would otherwise be
    picked up when resuming, or mixed with the new ones.
    """
    import shutil

    path = RUNS_DIR / name
    if fresh and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
