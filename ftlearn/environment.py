"""Environment check for 00_setup: is every package installed, at the version the course locks?

`requirements.txt` names the course's direct dependencies with floors (and the notebooks that need
each one); `requirements.lock` pins every package, transitive ones included, to the exact version
the committed notebooks were executed with. The check compares what is installed with both.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement
from packaging.requirements import Requirement as Pin
from packaging.utils import canonicalize_name
from packaging.version import Version

from ftlearn import paths

_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^\s#]*)\s*(?:#\s*(.*))?$")
# Builds a machine supplies itself: CPU or CUDA torch (its local label, +cpu or +cu128, is ignored)
MACHINE_BUILDS = {"torch"}


@dataclass(frozen=True)
class Requirement:
    """One line of requirements.txt: a package, its floor version and the notebooks that need it."""

    name: str
    minimum: str
    needed_by: str


def requirements(path: Path | None = None) -> list[Requirement]:
    """Parse requirements.txt (floor pins with a comment naming the notebooks)."""
    text = (path or paths.REPO_ROOT / "requirements.txt").read_text()
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append(Requirement(m[1], m[2], (m[3] or "").strip()))
    return out


def locked(path: Path | None = None) -> dict[str, str]:
    """requirements.lock as {canonical name: exact version}, for this Python and platform only."""
    path = path or paths.REPO_ROOT / "requirements.lock"
    if not path.exists():
        return {}
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            pin = Pin(line)
        except InvalidRequirement as e:
            raise ValueError(
                f"{path.name} line {number}: {e}. Regenerate it with `make lock`."
            ) from e
        if pin.marker is not None and not pin.marker.evaluate():
            continue  # e.g. a package for Windows only, or for another Python
        versions = [s.version for s in pin.specifier if s.operator == "=="]
        if len(versions) != 1:
            raise ValueError(f"{path.name} line {number}: {line!r} is not an exact pin (==).")
        out[canonicalize_name(pin.name)] = versions[0]
    return out


def installed_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _public(version: str) -> str:
    return version.split("+")[0]  # 2.13.0+cpu is torch 2.13.0, CPU build


def check(reqs: list[Requirement] | None = None, lock: dict[str, str] | None = None) -> list[dict]:
    """One row per direct requirement: installed, floor, locked; OK, DIFFERS (from the lock) or FAIL."""
    lock = locked() if lock is None else lock
    rows = []
    for r in reqs if reqs is not None else requirements():
        installed = installed_version(r.name)
        pinned = lock.get(canonicalize_name(r.name))
        if installed is None:
            status, problem = "FAIL", "not installed"
        elif Version(_public(installed)) < Version(r.minimum):
            status, problem = "FAIL", f"older than {r.minimum}"
        elif pinned and _public(installed) != pinned:
            status, problem = "DIFFERS", f"the lock has {pinned}"
        else:
            status, problem = "OK", ""
        rows.append(
            {
                "package": r.name,
                "installed": installed or "-",
                "required": f">={r.minimum}",
                "locked": pinned or "-",
                "status": status,
                "problem": problem,
                "needed_by": r.needed_by,
            }
        )
    return rows


def lock_differences(lock: dict[str, str] | None = None) -> dict[str, tuple[str | None, str]]:
    """Every locked package (transitive ones too) whose installed version differs: {name: (installed, locked)}."""
    lock = locked() if lock is None else lock
    out = {}
    for name, pinned in sorted(lock.items()):
        installed = installed_version(name)
        if installed is None or _public(installed) != pinned:
            out[name] = (installed, pinned)
    return out


def report(rows: list[dict], differences: dict[str, tuple[str | None, str]] | None = None) -> str:
    """The check as a table, with the fix for each failure and every package that differs from the lock."""
    lines = [f"{'':9} {'package':14} {'installed':14} {'locked':10} {'required':12} needed by"]
    for r in rows:
        lines.append(
            f"[{r['status']:7}] {r['package']:14} {r['installed']:14} {r['locked']:10} "
            f"{r['required']:12} {r['needed_by']}"
        )
    failed = [r for r in rows if r["status"] == "FAIL"]
    if failed:
        names = " ".join(f"'{r['package']}{r['required']}'" for r in failed)
        lines.append(f"\n{len(failed)} problem(s). Fix: `make setup`, or pip install {names}")
    direct = {canonicalize_name(r["package"]) for r in rows}
    others = {k: v for k, v in (differences or {}).items() if k not in direct}
    differ = [r for r in rows if r["status"] == "DIFFERS"]
    if differ or others:
        names = [r["package"] for r in differ] + [
            f"{k} {i or 'missing'} (lock {p})" for k, (i, p) in others.items()
        ]
        lines.append(
            f"\n{len(names)} package(s) differ from requirements.lock: {', '.join(names)}.\n"
            "The notebooks' committed outputs were made with the locked versions; yours may differ "
            "slightly. To match them: `make setup` (or on Colab rerun the first cell)."
        )
    if not failed and not differ and not others:
        lines.append(
            f"\nall {len(rows)} direct packages OK and every locked package at its locked version "
            f"(Python {sys.version.split()[0]})"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`python -m ftlearn.environment [--quiet] [--floors]`: exit 1 on a failure.

    Without --floors (the locked install of `make setup`), a package that differs from the lock
    is a failure too; with it (`make test-latest`), only a missing or too-old package is.
    """
    rows = check()
    differences = {} if "--floors" in argv else lock_differences()
    differences = {k: v for k, v in differences.items() if k not in MACHINE_BUILDS or v[0] is None}
    bad = [r for r in rows if r["status"] == "FAIL"]
    if "--floors" not in argv:
        bad += [r for r in rows if r["status"] == "DIFFERS" and r["package"] not in MACHINE_BUILDS]
    if "--quiet" not in argv or bad or differences:
        print(report(rows, differences))
    return 1 if bad or differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
