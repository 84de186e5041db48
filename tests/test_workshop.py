"""The workshop kit: a wheelhouse that installs with pip's index disabled, and prefetched hub models.

No test here reaches a network. The wheelhouse is packed from a folder of wheels built here, a
stand-in for PyPI (`pip download --no-index --find-links`), then installed for real by
scripts/setup.sh into a fresh virtual environment with the index disabled. These machines have no
model hub: `prefetch` is tested with stand-ins for huggingface_hub's `model_info` and
`snapshot_download`, and the cache they fill is read for real by `ftlearn.models.load` with
HF_HUB_OFFLINE=1.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftlearn import paths
from ftlearn.workshop import (
    MANIFEST,
    PrefetchError,
    cached_models,
    lock_lines,
    marker_environment,
    pack,
    prefetch,
)

REPO = paths.REPO_ROOT
NO_PIP_CONFIG = {"PIP_CONFIG_FILE": os.devnull}  # this machine's pip.conf adds indexes and /opt/wheels


def _clean_env(**extra) -> dict:
    # No pip settings from this machine (PIP_FIND_LINKS=/opt/wheels here): only the stand-in index.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, **NO_PIP_CONFIG, **extra}


def _wheel_of_installed(name: str, index: Path) -> None:
    # The installed copy of `name` zipped back into a wheel (a wheel is that zip): setuptools for
    # the editable install's build, without a network. The one installed here needs no `wheel`.
    import zipfile
    from importlib.metadata import distribution

    dist = distribution(name)
    files = [f for f in dist.files or [] if "__pycache__" not in str(f) and not str(f).startswith("..")]
    out = index / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for f in files:
            path = Path(dist.locate_file(f))
            if path.is_file():
                zf.write(path, str(f))


def _wheel(index: Path, name: str, version: str, work: Path) -> None:
    # A one-module project built into a wheel with the setuptools installed here: no network.
    src = work / f"src-{name}"
    (src / name.replace("-", "_")).mkdir(parents=True)
    (src / name.replace("-", "_") / "__init__.py").write_text(f"VERSION = {version!r}\n")
    (src / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(index), str(src)], check=True, env=_clean_env())  # fmt: skip


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    """The stand-in for PyPI: three wheels, and setuptools (the build backend of an editable install)."""
    work = tmp_path_factory.mktemp("index")
    index = work / "simple"
    index.mkdir()
    for name, version in [("demo-a", "0.1"), ("demo-b", "0.2"), ("demo-c", "0.3")]:
        _wheel(index, name, version, work)
    _wheel_of_installed("setuptools", index)
    return index


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A stand-in for the course: a project installed in editable mode, its lock and --no-deps list."""
    root = tmp_path_factory.mktemp("course")
    (root / "course_demo").mkdir()
    (root / "course_demo" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "course-demo"\nversion = "0"\n'
    )
    (root / "requirements.lock").write_text(
        "# a lock: one line for every machine, one for Windows only\n"
        "demo-a==0.1\n"
        "demo-b==0.2 ; sys_platform == 'win32'\n"
    )
    (root / "requirements-nodeps.txt").write_text("demo-c==0.3         # installed with --no-deps\n")
    return root


def _no_pip_settings(monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


def _pack(dest: Path, course: Path, index: Path, **kw):
    return pack(dest, lock=course / "requirements.lock", nodeps=course / "requirements-nodeps.txt",
                project=course, index_args=["--no-index", "--find-links", str(index)], torch_index=None, **kw)  # fmt: skip


def test_the_lock_is_read_for_the_target_platform(course):
    lock = course / "requirements.lock"
    linux, skipped = lock_lines(lock, marker_environment("linux-x86_64", "3.11"))
    assert linux == ["demo-a==0.1"] and skipped == ["demo-b==0.2 ; sys_platform == 'win32'"]
    windows, _ = lock_lines(lock, marker_environment("windows-x86_64", "3.12"))
    assert windows == ["demo-a==0.1", "demo-b==0.2"]
    with pytest.raises(ValueError, match="Unknown platform 'amiga'. Known: linux-x86_64"):
        marker_environment("amiga", "3.11")


def test_a_wheelhouse_installs_with_the_index_disabled(tmp_path, course, index, monkeypatch):
    _no_pip_settings(monkeypatch)
    wheelhouse = tmp_path / "wheelhouse"
    report = _pack(wheelhouse, course, index)
    assert report.missing == [] and len(report.skipped) == 1
    names = sorted(n.split("-")[0] for n in report.files)
    assert names == ["demo_a", "demo_c", "setuptools"], report.files  # demo-b is for Windows only
    manifest = json.loads((wheelhouse / MANIFEST).read_text())
    assert manifest["files"] == report.files and manifest["missing"] == []
    assert "every package has a wheel" in str(report)

    venv = tmp_path / "venv"  # fresh: scripts/setup.sh creates it
    env = _clean_env(FTLEARN_WHEELHOUSE=str(wheelhouse), FTLEARN_LOCK=str(course / "requirements.lock"),
                     FTLEARN_NODEPS=str(course / "requirements-nodeps.txt"), FTLEARN_PROJECT=str(course))  # fmt: skip
    run = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), str(venv)], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pip's index disabled" in run.stdout
    imported = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import demo_a, demo_c, course_demo; print(demo_a.VERSION, demo_c.VERSION)"],
                              capture_output=True, text=True)  # fmt: skip
    assert imported.stdout.split() == ["0.1", "0.3"], imported.stderr


def test_packages_without_a_wheel_are_named(tmp_path, course, index, monkeypatch):
    _no_pip_settings(monkeypatch)
    lock = tmp_path / "requirements.lock"
    lock.write_text("demo-a==0.1\ndemo-z==9.9\n")  # demo-z: on no index
    report = pack(tmp_path / "wh", lock=lock, nodeps=tmp_path / "none.txt", project=course,
                  index_args=["--no-index", "--find-links", str(index)], torch_index=None)  # fmt: skip
    assert report.missing == ["demo-z==9.9"]
    assert "NO WHEEL" in str(report) and "demo-z==9.9" in str(report)
    assert any(n.startswith("demo_a") for n in report.files), "the others are still packed"


def test_another_platform_takes_its_markers_and_pure_wheels(tmp_path, course, index, monkeypatch):
    _no_pip_settings(monkeypatch)
    report = _pack(tmp_path / "wh", course, index, platform="windows-x86_64", python_version="3.12")
    assert report.missing == [] and report.skipped == []  # demo-b's marker holds on Windows
    assert sorted(n.split("-")[0] for n in report.files) == ["demo_a", "demo_b", "demo_c", "setuptools"]


def test_setup_offline_without_a_wheelhouse_says_how_to_make_one(tmp_path):
    env = {**os.environ, "FTLEARN_WHEELHOUSE": str(tmp_path / "nowhere")}
    run = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), str(tmp_path / "venv")], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 1 and "make wheelhouse WHEELHOUSE=" in run.stderr
    assert not (tmp_path / "venv").exists(), "nothing is created before the check"


# ----------------------------------------------------------------------------- prefetch

HUB_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json"]  # fmt: skip


def _stand_in_hub(log: list):
    """model_info and snapshot_download doubles: the 'hub' serves tiny-base under any repo id."""
    src = paths.MODELS_DIR / "tiny-base"

    def model_info(repo, files_metadata=False):
        log.append(("info", repo))
        files = [SimpleNamespace(rfilename=f.name, size=f.stat().st_size) for f in src.iterdir()]
        return SimpleNamespace(siblings=[*files, SimpleNamespace(rfilename="pytorch_model.bin", size=10**9)])

    def snapshot_download(repo, cache_dir, allow_patterns):
        # the hub cache's layout: models--org--name/{refs/main, snapshots/<commit>/files}
        log.append(("download", repo, tuple(allow_patterns)))
        folder = Path(cache_dir) / f"models--{repo.replace('/', '--')}"
        commit = "0" * 40
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
        snap = folder / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.name in HUB_FILES:
                shutil.copy(f, snap / f.name)
        return str(snap)

    return model_info, snapshot_download


def test_prefetch_prints_sizes_then_fills_a_cache_that_load_reads_offline(tmp_path):
    log, said = [], []
    model_info, snapshot_download = _stand_in_hub(log)
    sizes = prefetch("smol-hub", tmp_path / "hf", model_info=model_info,
                     snapshot_download=snapshot_download, say=said.append)  # fmt: skip
    models = ["HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M"]
    assert list(sizes) == models
    assert [e[0] for e in log] == ["info"] * 3 + ["download"] * 3, "every size is printed before any download"
    assert "GiB in all" in said[0] and all(s < 10**9 for s in sizes.values()), "only what load reads is counted"
    assert cached_models("smol-hub", tmp_path / "hf") == dict.fromkeys(models, True)
    # For real: HF_HOME=<the folder> and HF_HUB_OFFLINE=1 are all ftlearn.models.load needs.
    code = ("from dataclasses import replace; from ftlearn.models import load; from ftlearn.profiles import get\n"
            "m, t = load(replace(get('smol-hub'), device='cpu', dtype='float32'), 'instruct')\n"
            "print(m.num_parameters(), len(t))")  # fmt: skip
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[0]) > 1_000_000


def test_prefetch_without_a_network_names_the_profile_models_and_fix(tmp_path):
    def no_network(repo, files_metadata=False):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    with pytest.raises(PrefetchError) as err:
        prefetch("t4", tmp_path / "hf", model_info=no_network, snapshot_download=None, say=lambda s: None)
    from ftlearn.profiles import get

    message, t4 = str(err.value), get("t4")
    for part in ("'t4'", t4.base_model, t4.instruct_model, t4.qlora_model, "HF_HOME=", "ConnectionError"):
        assert part in message


def test_prefetch_of_an_offline_profile_downloads_nothing(tmp_path):
    said = []
    assert prefetch("tiny", tmp_path, model_info=None, snapshot_download=None, say=said.append) == {}
    assert "data/models/" in said[0]
    with pytest.raises(ValueError, match="Unknown profile 'huge'"):
        prefetch("huge", tmp_path)


def test_cli_prefetch_exits_1_with_the_message(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from ftlearn import cli

    def offline(self, repo, **_):  # what huggingface_hub raises under HF_HUB_OFFLINE=1
        raise huggingface_hub.errors.OfflineModeIsEnabled(f"Cannot reach {repo}: offline mode is enabled.")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    assert cli.main(["prefetch", "smol-hub", "--to", str(tmp_path)]) == 1
    assert "Could not fetch the models of profile 'smol-hub'" in capsys.readouterr().err
