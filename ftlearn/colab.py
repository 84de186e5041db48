"""The Colab install: the locked versions of everything but torch, which stays Colab's own build.

Runs from the first cell of every notebook, before anything but the standard library is
importable, so this module imports nothing else from ftlearn.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Colab's torch is built for its CUDA driver: a locked CPU or other CUDA build would not run there.
KEEP = ("torch",)


def lock_without_machine_builds(lock: Path) -> str:
    """requirements.lock's text less the packages the machine keeps (torch)."""
    keep = tuple(f"{name}==" for name in KEEP)
    return "".join(line for line in lock.open() if not line.startswith(keep))


def loaded_versions() -> dict[str, str]:
    """Versions of the distributions whose modules this kernel has already imported."""
    dists = importlib.metadata.packages_distributions()
    out = {}
    for module in {name.split(".")[0] for name in list(sys.modules)}:
        for dist in dists.get(module, []):
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
    return out


def install(root: Path = ROOT, run=subprocess.check_call) -> bool:
    """Install the course's locked packages (once per runtime); return True if a restart is needed."""
    lock = root / "requirements.lock"
    text = lock_without_machine_builds(lock)
    stamp = root / ".colab-installed"
    digest = hashlib.sha256(text.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        print("ftlearn: the locked packages are installed in this runtime already")
        return False
    before = loaded_versions()
    pinned = root / ".colab-requirements.txt"
    pinned.write_text(text)
    print(
        f"ftlearn: installing requirements.lock, keeping this runtime's torch {before.get('torch', '')}"
    )
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    run([*pip, "-r", str(pinned)])
    run([*pip, "--no-deps", "-r", str(root / "requirements-nodeps.txt")])
    stamp.write_text(digest)
    importlib.invalidate_caches()
    changed = {}
    for dist, old in before.items():
        try:
            new = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if new != old:
            changed[dist] = (old, new)
    if changed:
        names = ", ".join(f"{d} {o} -> {n}" for d, (o, n) in sorted(changed.items()))
        print(
            f"RESTART NEEDED: this kernel had already imported {names}.\n"
            "Runtime -> Restart session, then run this cell again (the install is kept)."
        )
        return True
    print("ftlearn: installed; no restart needed (nothing installed was imported yet)")
    return False
