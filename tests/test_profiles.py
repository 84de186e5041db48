"""Profile choice from mocked hardware: the right profile, dtype and reasons for each machine."""

import pytest

from ftlearn import profiles
from ftlearn.hardware import Hardware, detect
from ftlearn.precision import policy


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(profiles.ENV_VAR, raising=False)


def test_cpu_without_network_gets_tiny():
    p = profiles.choose(Hardware(device="cpu", hub_reachable=False))
    assert p.name == "tiny" and p.dtype == "float32" and p.device == "cpu"
    assert any("no GPU" in r for r in p.reasons)


def test_cpu_with_network_still_gets_tiny_and_mentions_smol_when_wheel_installed():
    p = profiles.choose(Hardware(device="cpu", hub_reachable=True, smollm2_wheel=True))
    assert p.name == "tiny"
    assert any("FTLEARN_PROFILE=smol" in r for r in p.reasons)


def test_t4_gets_fp16_and_the_t4_profile():
    t4 = Hardware(
        device="cuda", gpu_name="Tesla T4", gpu_memory_gb=14.7, bf16=False, hub_reachable=True
    )
    p = profiles.choose(t4)
    assert p.name == "t4" and p.dtype == "float16" and p.device == "cuda"
    assert policy(p, "full").flags() == {"bf16": False, "fp16": True}
    assert policy(p, "full").load_dtype == "float32"  # fp16 autocast trains fp32 weights


def test_bf16_gpu_of_24gb_gets_t4_profile_in_bf16():
    l4 = Hardware(
        device="cuda", gpu_name="NVIDIA L4", gpu_memory_gb=22.5, bf16=True, hub_reachable=True
    )
    p = profiles.choose(l4)
    assert p.name == "t4" and p.dtype == "bfloat16"


def test_large_bf16_gpu_gets_gpu_large():
    a100 = Hardware(
        device="cuda", gpu_name="A100", gpu_memory_gb=79.2, bf16=True, hub_reachable=True
    )
    assert profiles.choose(a100).name == "gpu-large"


def test_a_40gb_bf16_gpu_gets_the_t4_profile_in_bf16():
    # gpu-large is sized for 80 GB: `ftlearn plan gpu-large --memory-gb 40` fails
    a100_40 = Hardware(
        device="cuda", gpu_name="A100 40GB", gpu_memory_gb=39.4, bf16=True, hub_reachable=True
    )
    p = profiles.choose(a100_40)
    assert p.name == "t4" and p.dtype == "bfloat16"


def test_every_profile_on_its_target_gets_its_own_device_and_dtype():
    for name, target in profiles.TARGETS.items():
        p = profiles.on_target(name)
        assert p.name == name and p.device == target.hardware.device
        picked = "tiny" if name == "smol" else name  # smol is opt-in: a CPU gets tiny
        assert profiles.choose(target.hardware).name == picked
    assert profiles.on_target("t4").dtype == "float16"
    assert profiles.on_target("gpu-large").dtype == "bfloat16"


def test_large_gpu_without_bf16_falls_back_to_fp16():
    v100 = Hardware(
        device="cuda", gpu_name="V100", gpu_memory_gb=32, bf16=False, hub_reachable=True
    )
    p = profiles.choose(v100, override="gpu-large")
    assert p.dtype == "float16" and any("no bf16" in r for r in p.reasons)


def test_gpu_without_hub_gets_embedded_default_on_cuda():
    p = profiles.choose(
        Hardware(device="cuda", gpu_name="T4", gpu_memory_gb=15, hub_reachable=False)
    )
    assert p.name == "tiny" and p.device == "cuda"


def test_cpu_never_gets_half_precision_even_when_overridden():
    p = profiles.choose(Hardware(device="cpu"), override="t4")
    assert p.name == "t4" and p.dtype == "float32"


def test_override_from_environment(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "smol")
    p = profiles.choose(Hardware(device="cpu"))
    assert p.name == "smol" and "FTLEARN_PROFILE=smol" in p.reasons[0]


def test_unknown_override_lists_valid_profiles(monkeypatch):
    monkeypatch.setenv(profiles.ENV_VAR, "huge")
    with pytest.raises(ValueError) as err:
        profiles.choose(Hardware(device="cpu"))
    msg = str(err.value)
    assert "'huge'" in msg and all(name in msg for name in profiles.PROFILES)


def test_every_profile_is_complete():
    for p in profiles.PROFILES.values():
        assert p.base_model and p.instruct_model and p.qlora_model and p.cost and p.expected
        assert p.dtype in ("float32", "float16", "bfloat16")
        assert set(p.lora_targets) <= set(profiles.LLAMA_LINEAR)
    assert {"tiny", "smol", "smol-hub", "t4", "gpu-large"} <= set(profiles.PROFILES)


def test_detect_here_respects_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hw = detect()
    assert hw.hub_offline and not hw.hub_reachable
    assert hw.device in ("cpu", "cuda", "mps") and hw.cpu_threads >= 1


def test_describe_names_the_switch():
    text = profiles.describe(profiles.choose(Hardware(device="cpu")))
    assert "profile: tiny" in text and profiles.ENV_VAR in text
