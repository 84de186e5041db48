"""The `ftlearn` command: build the tiny models, run the notebooks headless, check the machine and
whether every training run fits a profile's GPU (`ftlearn plan`), and the workshop kit: a
wheelhouse, hub models fetched ahead (`ftlearn prefetch`) and the check at the door (`ftlearn doctor`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ftlearn import paths


def strip(nb) -> None:
    """Remove what should not be committed: cell metadata (tags kept), widget state, timings."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in ("kernelspec", "language_info")}
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k == "tags"}
        cell.pop("id", None)
        for out in cell.get("outputs", []):  # an exercise not yet done: its message, no paths
            if out.get("output_type") == "error":
                out["traceback"] = [f"{out['ename']}: {out['evalue']}"]


def process_peak_mib(pid: int) -> float:
    """A process's peak resident memory so far, in MiB (Linux's VmHWM; elsewhere its current RSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def slowest_cells(nb, n: int = 5) -> list[tuple[int, float]]:
    """The `n` slowest code cells of an executed notebook: (code cell number from 1, seconds)."""
    from datetime import datetime

    times = []
    for number, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        stamps = cell.metadata.get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            start, end = (
                datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                for k in ("iopub.execute_input", "shell.execute_reply")
            )
            times.append((number, (end - start).total_seconds()))
    return sorted(times, key=lambda t: -t[1])[:n]


def run_notebooks(
    out_dir: Path | None,
    only: list[str] | None = None,
    timeout: int = 900,
    in_place: bool = False,
    timings: bool = False,
    solutions: bool = True,
) -> int:
    """Execute every notebook in order into `out_dir`, or back in place with `in_place`; then
    the exercises' solutions (notebooks/solutions/), unless `solutions=False`."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    folder = paths.REPO_ROOT / "notebooks"
    notebooks = sorted(folder.glob("[0-9][0-9]*_*.ipynb"))
    if solutions:
        notebooks += sorted((folder / "solutions").glob("[0-9][0-9]*_*.ipynb"))
    if only:  # "03" (the notebook and its solutions), "solutions/" (every solutions notebook)
        notebooks = [n for n in notebooks if any(
            n.name.startswith(o) or str(n.relative_to(folder)).startswith(o) for o in only)]
    if not in_place:
        out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for nb_path in notebooks:
        start = time.time()
        nb = nbformat.read(nb_path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(nb_path.parent)}},
        )
        peak = [0.0]  # the kernel's peak memory, read after every cell (the kernel ends with the run)

        def read_peak(client=client, peak=peak, **_) -> None:
            pid = getattr(getattr(client.km, "provisioner", None), "pid", None)
            if pid:
                peak[0] = max(peak[0], process_peak_mib(pid))

        client.on_cell_executed = read_peak
        try:
            client.execute()
            status = "ok"
        except (CellExecutionError, CellTimeoutError) as err:  # a timeout stops only this one
            failed += 1
            status = f"FAILED: {str(err).strip().splitlines()[-1]}"
        slow = slowest_cells(nb) if timings else []
        strip(nb)
        name = str(nb_path.relative_to(folder))  # "03_sft.ipynb", "solutions/03_sft.ipynb"
        if not in_place:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, nb_path if in_place else out_dir / name)
        print(f"{name:40} {time.time() - start:6.0f} s  {peak[0]:6.0f} MiB peak  {status}", flush=True)
        for number, seconds in slow:
            print(f"{'':4}code cell {number:3}: {seconds:6.1f} s", flush=True)
    print(
        "executed in place (stripped, ready to commit)"
        if in_place
        else f"executed copies in {out_dir}"
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ftlearn` console script."""
    parser = argparse.ArgumentParser(prog="ftlearn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build-tiny", help="rebuild data/ (world, tokenizer, tiny models) from the seed"
    )
    b.add_argument("--out", type=Path, default=None, help="output folder (default: data/)")
    b.add_argument("--quick", action="store_true", help="a reduced build in seconds (for tests)")
    b.add_argument("--world-only", action="store_true", help="write the synthetic world, no models")
    b.add_argument("--hedging-only", action="store_true", help="rebuild tiny-hedging only (~3 min)")
    b.add_argument("--reader-only", action="store_true", help="rebuild tiny-reader only (~25 min)")
    r = sub.add_parser("run-notebooks", help="execute the notebooks in order, without a browser")
    r.add_argument("--out", type=Path, default=paths.RUNS_DIR / "executed")
    r.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 00 01; solutions/ for the solutions only")
    r.add_argument(
        "--in-place",
        action="store_true",
        help="write back into notebooks/, stripped: how notebooks are committed",
    )
    r.add_argument("--timings", action="store_true", help="print each notebook's slowest cells")
    r.add_argument("--no-solutions", action="store_true", help="skip notebooks/solutions/")
    sub.add_parser("check", help="environment, hardware and the profile this machine gets")
    sub.add_parser("profiles", help="list the profiles")
    pl = sub.add_parser(
        "plan", help="every training run of the notebooks on a profile, and whether it fits"
    )
    pl.add_argument("profile", nargs="+", help="profile names, or 'all'")
    pl.add_argument(
        "--memory-gb", type=float, default=None, help="GiB to check against (default: the target's)"
    )
    w = sub.add_parser("wheelhouse", help="every locked package, for an install with no network")
    w.add_argument("folder", type=Path, help="where the wheels go (a USB stick, a shared drive)")
    w.add_argument("--platform", default=None, help="linux-x86_64, linux-aarch64, macos-arm64 or "
                   "windows-x86_64 (default: this machine's)")  # fmt: skip
    w.add_argument("--python", default=None, help="the learners' Python, e.g. 3.12 (default: this one's)")
    pf = sub.add_parser("prefetch", help="download a profile's hub models into a cache folder (HF_HOME)")
    pf.add_argument("profile", help="a profile name (ftlearn profiles)")
    pf.add_argument("--to", type=Path, required=True, help="the cache folder learners set HF_HOME to")
    d = sub.add_parser("doctor", help="can this machine run the course? one screen, with fixes")
    d.add_argument("--no-hub-check", action="store_true", help="do not try to reach the model hub")
    args = parser.parse_args(argv)

    if args.command == "wheelhouse":
        from ftlearn.workshop import pack

        try:
            report = pack(args.folder, platform=args.platform, python_version=args.python)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        print(report)
        return 1 if report.missing else 0
    if args.command == "prefetch":
        from ftlearn.workshop import PrefetchError, prefetch

        try:
            prefetch(args.profile, args.to)
        except (PrefetchError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "doctor":
        from ftlearn import doctor

        return doctor.main(check_hub=not args.no_hub_check)

    if args.command == "build-tiny":
        if args.world_only:
            from ftlearn.world import build_world, write_world

            print(write_world(build_world(), (args.out or paths.DATA_DIR) / "world"))
            return 0
        if args.hedging_only:
            from ftlearn.tiny import build_hedging

            print(build_hedging(args.out))
            return 0
        if args.reader_only:
            from ftlearn.tiny import build_reader

            print(build_reader(args.out))
            return 0
        from ftlearn.tiny import build_tiny

        build_tiny(args.out, quick=args.quick)
        return 0
    if args.command == "run-notebooks":
        return run_notebooks(
            args.out, args.only, in_place=args.in_place, timings=args.timings,
            solutions=not args.no_solutions,
        )  # fmt: skip
    if args.command == "check":
        from ftlearn import environment, profiles

        rows = environment.check()
        print(environment.report(rows))
        profiles.setup()
        return 1 if any(r["status"] == "FAIL" for r in rows) else 0
    if args.command == "plan":
        from ftlearn import plan
        from ftlearn.profiles import get

        try:
            names = (
                list(plan.ALL) if args.profile == ["all"] else [get(n).name for n in args.profile]
            )
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        return plan.main(names, memory_gb=args.memory_gb)
    if args.command == "profiles":
        from ftlearn.profiles import PROFILES

        for p in PROFILES.values():
            print(f"{p.name:10} {p.description}\n{'':10} {p.cost}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
