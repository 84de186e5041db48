"""Experiment tracking (09_evaluation): one switch for every run, and a results file that reproduces them.

`FTLEARN_TRACKING` chooses where the Trainer's logs go: `none` (the default, and what the tests
use), `tensorboard` (local files under each run's folder, no account), or a hosted tracker
(`wandb`; it needs its own login, or `WANDB_MODE=offline`). Every config the course builds takes
its `report_to` from `report_to()` here. Independently, `record` appends one line per run to
`runs/results.jsonl`: its metrics, settings, a hash of the data it saw, the package versions and
the seed, which is what it takes to reproduce a number in a table.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .paths import RUNS_DIR

TRACKING_ENV = "FTLEARN_TRACKING"
TRACKERS = {  # switch value -> (transformers' report_to name, the package it needs)
    "none": ("none", None),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "trackio": ("trackio", "trackio"),
}
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "lm-eval")
RESULTS = RUNS_DIR / "results.jsonl"  # under the repository, wherever the kernel starts (nbval: notebooks/)


def report_to(value: str | None = None) -> str:
    """The `report_to` for a Trainer config: `value`, else $FTLEARN_TRACKING, else "none"."""
    name = (value or os.environ.get(TRACKING_ENV) or "none").strip().lower()
    if name not in TRACKERS:
        raise ValueError(f"{TRACKING_ENV}={name!r} is not a tracker the course knows: use one of {', '.join(TRACKERS)}.")
    target, package = TRACKERS[name]
    if package and importlib.util.find_spec(package) is None:
        raise ImportError(
            f"{TRACKING_ENV}={name} needs the {package} package, which is not installed: "
            f"`pip install {package}`, or set {TRACKING_ENV}=none (or tensorboard, which the lock installs)."
        )
    if name == "wandb" and not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled")):
        raise RuntimeError(
            f"{TRACKING_ENV}=wandb needs an account: run `wandb login` (or set WANDB_API_KEY), or "
            "WANDB_MODE=offline to keep the run on disk and `wandb sync` it later."
        )
    return target


def data_hash(rows: Sequence[dict] | Sequence[str]) -> str:
    """The first 16 hex digits of the SHA-256 of the rows as canonical JSON: the same data, the same hash."""
    blob = json.dumps(list(rows), sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that move a result ("-" where one is not installed)."""
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def record(
    name: str,
    metrics: dict,
    settings: dict | object,
    rows: Sequence,
    seed: int,
    profile: str,
    path: str | Path = RESULTS,
) -> dict:
    """Append one run to the results file: what it scored, with what it takes to reproduce it."""
    if hasattr(settings, "__dataclass_fields__"):
        from dataclasses import asdict

        settings = asdict(settings)
    entry = {
        "name": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "profile": profile,
        "seed": seed,
        "metrics": metrics,
        "settings": settings,
        "data": {"rows": len(rows), "sha256": data_hash(rows)},
        "versions": versions(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    return entry


def record_hits(
    notebook: str, hits: dict[str, Sequence[int]], rows: Sequence, profile: str, seed: int = 0, path: str | Path = RESULTS
) -> list[dict]:
    """Record per-question exact-match hits of several runs on the same `rows` (09 tests the claims from them)."""
    out = []
    for name, h in hits.items():
        h = [int(x) for x in h]
        if len(h) != len(rows):
            raise ValueError(f"{notebook} {name}: {len(h)} hits for {len(rows)} questions; score every row once.")
        metrics = {"exact match": sum(h) / len(h), "hits": h}
        out.append(record(f"{notebook} {name}", metrics, {"notebook": notebook}, rows, seed, profile, path))
    return out


def latest(name: str, profile: str, runs: Sequence[dict] | None = None) -> dict | None:
    """The newest recorded run called `name` on `profile` (None where there is none)."""
    found = [r for r in (read() if runs is None else runs) if r["name"] == name and r["profile"] == profile]
    return found[-1] if found else None


def read(path: str | Path = RESULTS) -> list[dict]:
    """Every run recorded in the results file, oldest first (a malformed line is named, not skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {n}: not a JSON object ({err.msg}). Delete or fix that line.") from err
    return out


def read_tensorboard(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars a Trainer logged to TensorBoard under `logdir`: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(logdir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {logdir}: was the run made with {TRACKING_ENV}=tensorboard?")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for file in files:
        acc = EventAccumulator(str(file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars
