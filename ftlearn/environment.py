"""Environment check for 00_setup: is every package from requirements.txt installed, new enough?"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass

from packaging.version import Version

from ftlearn import paths

_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^\s#]*)\s*(?:#\s*(.*))?$")


@dataclass(frozen=True)
class Requirement:
    """One line of requirements.txt: a package, its floor version and the notebooks that need it."""

    name: str
    minimum: str
    needed_by: str


def requirements(path=None) -> list[Requirement]:
    """Parse requirements.txt (floor pins with a comment naming the notebooks)."""
    text = (path or paths.REPO_ROOT / "requirements.txt").read_text()
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append(Requirement(m[1], m[2], (m[3] or "").strip()))
    return out


def check(reqs: list[Requirement] | None = None) -> list[dict]:
    """One row per requirement: installed version, required floor, OK or FAIL and why."""
    rows = []
    for r in reqs if reqs is not None else requirements():
        try:
            installed = importlib.metadata.version(r.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        ok = installed is not None and Version(installed.split("+")[0]) >= Version(r.minimum)
        problem = (
            "" if ok else ("not installed" if installed is None else f"older than {r.minimum}")
        )
        rows.append(
            {
                "package": r.name,
                "installed": installed or "-",
                "required": f">={r.minimum}",
                "status": "OK" if ok else "FAIL",
                "problem": problem,
                "needed_by": r.needed_by,
            }
        )
    return rows


def report(rows: list[dict]) -> str:
    """The check as a table: [OK]/[FAIL] per package, with the fix for each failure."""
    lines = [f"{'':6} {'package':14} {'installed':14} {'required':12} needed by"]
    for r in rows:
        lines.append(
            f"[{r['status']:4}] {r['package']:14} {r['installed']:14} {r['required']:12} {r['needed_by']}"
        )
    failed = [r for r in rows if r["status"] == "FAIL"]
    if failed:
        names = " ".join(f"'{r['package']}{r['required']}'" for r in failed)
        lines.append(
            f"\n{len(failed)} problem(s). Fix: pip install -U {names}  (or rerun `make setup`)"
        )
    else:
        lines.append(f"\nall {len(rows)} packages OK (Python {sys.version.split()[0]})")
    return "\n".join(lines)


if __name__ == "__main__":
    rows = check()
    failed = [r for r in rows if r["status"] == "FAIL"]
    if "--quiet" not in sys.argv or failed:
        print(report(rows))
    sys.exit(1 if failed else 0)
