"""The precision policy: the dtypes each profile trains with, on mocked hardware, and why fp32 trains."""

import pytest
import torch

from ftlearn import estimator, models, precision, profiles, shapes
from ftlearn.hardware import Hardware

T4 = Hardware(
    device="cuda", gpu_name="Tesla T4", gpu_memory_gb=14.7, bf16=False, hub_reachable=True
)
A100 = Hardware(device="cuda", gpu_name="A100", gpu_memory_gb=79.2, bf16=True, hub_reachable=True)
L4 = Hardware(
    device="cuda", gpu_name="NVIDIA L4", gpu_memory_gb=22.5, bf16=True, hub_reachable=True
)
CPU = Hardware(device="cpu")


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(profiles.ENV_VAR, raising=False)


# (hardware, profile it gets, method) -> (load, trainable, compute, fp16, bf16)
EXPECTED = {
    (T4, "t4", "full"): ("float32", "float32", "float16", True, False),
    (T4, "t4", "lora"): ("float16", "float32", "float16", True, False),
    (T4, "t4", "qlora"): ("float16", "float32", "float16", True, False),
    (L4, "t4", "full"): ("float32", "float32", "bfloat16", False, True),
    (L4, "t4", "lora"): ("bfloat16", "float32", "bfloat16", False, True),
    (A100, "gpu-large", "full"): ("float32", "float32", "bfloat16", False, True),
    (A100, "gpu-large", "lora"): ("bfloat16", "float32", "bfloat16", False, True),
    (A100, "gpu-large", "qlora"): ("bfloat16", "float32", "bfloat16", False, True),
    (CPU, "tiny", "full"): ("float32", "float32", "float32", False, False),
    (CPU, "tiny", "lora"): ("float32", "float32", "float32", False, False),
    (CPU, "tiny", "qlora"): ("float32", "float32", "float32", False, False),
}


@pytest.mark.parametrize(
    "hw, name, method", list(EXPECTED), ids=lambda v: getattr(v, "gpu_name", v)
)
def test_each_profile_trains_in_the_dtypes_of_the_policy(hw, name, method):
    profile = profiles.choose(hw)
    assert profile.name == name
    p = precision.policy(profile, method)
    assert (p.load_dtype, p.trainable_dtype, p.compute_dtype, p.fp16, p.bf16) == EXPECTED[
        (hw, name, method)
    ]


def test_nothing_trains_in_16_bits_and_cpus_never_autocast():
    for name in profiles.PROFILES:
        for hw in (T4, A100, L4, CPU):
            profile = profiles.choose(hw, override=name)
            for method in precision.METHODS:
                p = precision.policy(profile, method)
                assert p.trainable_dtype == "float32"
                assert not (p.fp16 and p.bf16)
                if hw.device == "cpu":
                    assert p.flags() == {"bf16": False, "fp16": False} and p.mode == "fp32"


def test_full_fine_tuning_costs_16_bytes_a_parameter_everywhere():
    # mixed precision, not pure 16-bit: fp32 weights, gradients and AdamW's two moments
    for hw in (T4, A100, CPU):
        p = precision.policy(profiles.choose(hw), "full")
        assert p.bytes_per_param() == {
            "weights": 4,
            "gradients": 4,
            "optimizer": 8,
            "master": 0,
            "frozen": 0,
        }
        assert p.trained_bytes() == 16
    assert precision.policy(profiles.choose(A100), "lora").bytes_per_param()["frozen"] == 2
    assert precision.policy(profiles.choose(CPU), "lora").bytes_per_param()["frozen"] == 4


@pytest.mark.parametrize("hw", [T4, A100, CPU], ids=["t4", "gpu-large", "cpu"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_estimator_counts_what_the_policy_stores(hw, method):
    p = precision.policy(profiles.choose(hw), method)
    shape = shapes.MODELS["SmolLM2-360M"]
    setup = estimator.TrainingSetup(
        method, lora_r=16, lora_targets="all-linear", **p.estimate_args()
    )
    est = estimator.estimate(shape, setup)
    b = p.bytes_per_param()
    trainable = shape.n_params if method == "full" else shapes.lora_params(shape, 16, "all-linear")
    assert est.gradients == trainable * b["gradients"]
    assert est.optimizer == trainable * b["optimizer"]
    frozen = 0 if method == "full" else shape.n_params * b["frozen"]
    assert est.weights == frozen + trainable * b["weights"]


def test_04_and_06_count_a_7b_full_fine_tuning_the_same_way():
    # 04 estimates Mistral-7B under the gpu-large policy; 06's fit table uses FIT_SETUP
    from dataclasses import replace

    gpu = profiles.on_target("gpu-large")
    setup = estimator.TrainingSetup("full", **precision.policy(gpu, "full").estimate_args())
    policy = estimator.estimate("Mistral-7B", setup)
    full = replace(estimator.FIT_SETUP, method="full")
    fit = estimator.will_it_fit("Mistral-7B", "A100 80GB", full)
    n = shapes.MODELS["Mistral-7B"].n_params
    assert policy.weights + policy.gradients + policy.optimizer == 16 * n
    assert fit.estimate.weights + fit.estimate.gradients + fit.estimate.optimizer == 16 * n


def test_summary_names_the_mode_for_the_setup_cell():
    assert "mixed bf16" in precision.summary(profiles.choose(A100))
    t4 = precision.summary(profiles.choose(T4))
    assert "mixed fp16" in t4 and "loss scaling" in t4 and "fp32 weights" in t4
    assert "precision" in profiles.describe(profiles.choose(T4))


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="full"):
        precision.policy(profiles.choose(CPU), "prefix")


def _scaled_step(model) -> torch.Tensor:
    """One fp16-autocast step with a gradient scaler, as the Trainer runs `fp16=True` on a T4."""
    ids = torch.randint(
        0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    # 2**16 (the default) overflows this model's fp16 backward: the scaler would skip the step
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(input_ids=ids, labels=ids).loss
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # what fails on fp16 gradients
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0**10, "the step overflowed and was skipped"
    return loss


def test_t4_policy_loads_fp32_weights_that_a_scaled_fp16_step_trains():
    t4 = profiles.choose(T4)  # its dtypes, applied to the tiny model on this machine's CPU
    model, _ = models.load(
        profiles.get("tiny"), "base", dtype=precision.policy(t4, "full").load_dtype
    )
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    _scaled_step(model)
    assert not torch.equal(before, model.model.layers[0].mlp.down_proj.weight)  # it trained


def test_fp16_weights_fail_the_scaler_as_on_a_t4():
    # what the t4 profile did before the policy: weights loaded in fp16, then fp16=True
    model, _ = models.load(profiles.get("tiny"), "base", dtype="float16")
    with pytest.raises(ValueError, match="unscale FP16 gradients"):
        _scaled_step(model)


def test_lora_on_a_16_bit_base_trains_fp32_adapters():
    from peft import get_peft_model

    from ftlearn.lora import lora_config

    t4 = profiles.choose(T4)
    model, _ = models.load(
        profiles.get("tiny"), "base", dtype=precision.policy(t4, "lora").load_dtype
    )
    peft_model = get_peft_model(model, lora_config(profiles.get("tiny")))
    trains = {p.dtype for p in peft_model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in peft_model.parameters() if not p.requires_grad}
    assert trains == {torch.float32} and frozen == {torch.float16}
    _scaled_step(peft_model)  # the scaler accepts fp32 adapter gradients beside a frozen fp16 base


def test_load_follows_the_method():
    tiny = profiles.get("tiny")
    assert models.load(tiny, "base")[0].dtype == torch.float32
    assert models.load(tiny, "base", method="lora")[0].dtype == torch.float32  # CPU: fp32
    assert models.load(tiny, "base", dtype="bfloat16")[0].dtype == torch.bfloat16  # dtype wins
