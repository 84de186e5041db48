"""Where the course keeps its shipped data, its training outputs and its cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
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


def run_dir(name: str) -> Path:
    """A fresh-or-existing folder under runs/ for one notebook's outputs."""
    path = RUNS_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    return path
