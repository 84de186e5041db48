"""Peak memory of real fine-tuning runs, as their authors published it, against `estimator.estimate` (06_qlora).

Each entry quotes one number from a paper or a library's documentation, in the unit the source
uses, with the run's configuration written as `TrainingSetup` fields. Only what the source (or the
config file it links, at the same commit) states goes in; where it leaves something out, `assumed`
says what was filled in. `not_modelled` names what the run did that the estimator does not model.

What the sources measured is PyTorch's allocator counters (`torch.cuda.max_memory_allocated` or
its "active" and "reserved" siblings), so the comparison counts what those counters see: a paged
optimizer's state lives in CUDA unified memory, outside the allocator, and an optimizer step fused
into the backward pass frees each gradient as soon as it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ftlearn.estimator import GiB, MemoryEstimate, TrainingSetup, estimate
from ftlearn.shapes import MODELS, ModelShape

UNITS = {"GB": 1e9, "GiB": 2**30, "TB": 1e12}  # GB as the sources' code divides: by 1e9

# What every entry's set-up starts from: the sources train in pure 16 bits (LitGPT's bf16-true,
# torchtune's `dtype: bf16`), with no fp32 copy of the weights; an entry's `config` says otherwise.
BASE_SETUP = {"dtype": torch.bfloat16, "mixed_precision": False}

# Shapes of the sources' models that the course's catalogue (shapes.MODELS) does not hold,
# from each model's config.json or paper.
SHAPES = {
    "Llama-2-7B": ModelShape(4096, 32, 11008, 32000, 32, 32),
    "Llama-2-13B": MODELS["Llama-2-13B"],
    "Llama-3.1-8B": MODELS["Llama-3.1-8B"],
    "Llama-3.2-3B": MODELS["Llama-3.2-3B"],
    "LLaMA-65B": ModelShape(8192, 80, 22016, 32000, 64, 64),
    # GPT-3 175B (Brown et al. 2020, Table 2.1): 96 layers of width 12,288, a 4x GELU MLP. Written
    # as a 3-matrix MLP of width 32,768, which has the same parameters (2 x 4 = 3 x 8/3).
    "GPT-3 175B": ModelShape(12288, 96, 32768, 50257, 96, 96, tied=True),
}

QV = ("q_proj", "v_proj")
ALL_BUT_K = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LITGPT = (
    "LitGPT, tutorials/resource-tables.md (LitGPT commit 8641822, A100-SXM4-40GB, PyTorch 2.1, "
    "bitsandbytes 0.41.1)",
    "https://github.com/Lightning-AI/litgpt/blob/main/tutorials/resource-tables.md",
    "torch.cuda.max_memory_allocated",
)
TORCHTUNE_2405 = (
    "torchtune README, 'Finetuning resource requirements' (commit 0217d44, May 2024)",
    "https://github.com/pytorch/torchtune/blob/0217d44c2e1e372b34628767745c1f6538086a81/README.md",
    "peak per GPU (which counter: not stated)",
)
TORCHTUNE_2409 = (
    "torchtune README, 'Memory and training speed' (commit 30b8519, Sep 2024)",
    "https://github.com/pytorch/torchtune/blob/30b8519e86d2094879576e16ab1f8d21a6f6f9f7/README.md",
    "peak per GPU (which counter: not stated)",
)
TORCHTUNE_2411 = (
    "torchtune README, 'Optimization flags' (commit 1814feb, Nov 2024)",
    "https://github.com/pytorch/torchtune/blob/1814feb17a9038e1a8053ce93111bd26774a8db6/README.md",
    "peak active memory",
)
QLORA = (
    "Dettmers et al., QLoRA (2023), README and scripts/finetune_guanaco_65b.sh",
    "https://github.com/artidoro/qlora",
    "the GPU's size",
)
LORA = (
    "Hu et al., LoRA (2021), section 4.2 'Practical benefits and limitations'",
    "https://arxiv.org/abs/2106.09685",
    "VRAM during training, all GPUs",
)

# LitGPT finetune/lora.py at 8641822: bf16-true, AdamW (bitsandbytes' PagedAdamW when quantized),
# r=8 on q and v, no activation checkpointing on one GPU, Alpaca; the first step takes the longest
# example, 1,304 Llama-2 tokens; memory printed as torch.cuda.max_memory_allocated() / 1e9.
_LITGPT_LORA = dict(seq_len=1304, lora_r=8, lora_targets=QV)
_BNB_041 = (
    "bitsandbytes before 0.43.2 kept every 4-bit layer's input for the backward pass "
    "(removed in bitsandbytes PR #1270)"
)


@dataclass(frozen=True)
class PublishedPeak:
    """One published peak: the number as reported, its source, and the run's configuration."""

    run: str  # a short label
    model: str  # a key of SHAPES
    method: str  # "full", "lora" or "qlora"
    reported: float  # the number, in `unit`
    unit: str  # a key of UNITS
    source: str
    url: str
    counter: str  # what was measured
    config: dict = field(default_factory=dict)  # TrainingSetup fields beyond method (BASE_SETUP)
    optimizer_in_backward: bool = False  # torchtune's fused step: no full set of gradients
    kind: str = "measured"  # "measured", or "fits in": the source says the run fits in this much
    not_modelled: str = ""  # what the run did that `estimate` does not model
    assumed: str = ""  # settings the source does not report, filled in here

    @property
    def reported_bytes(self) -> float:
        """The reported number in bytes."""
        return self.reported * UNITS[self.unit]


# One entry per published number: label, model, method, the number and its unit, source, url and
# counter, then the run's TrainingSetup fields. (Laid out as a table: `ruff format` leaves it.)
# fmt: off
PEAKS = [
    # ---- LitGPT: LoRA and QLoRA (NF4 with double quantization) on one A100 40GB ----
    PublishedPeak("LitGPT LoRA 7B", "Llama-2-7B", "lora", 21.30, "GB", *LITGPT,
                  dict(batch_size=1, optimizer="adamw", **_LITGPT_LORA)),
    PublishedPeak("LitGPT LoRA 7B, batch 2", "Llama-2-7B", "lora", 29.07, "GB", *LITGPT,
                  dict(batch_size=2, optimizer="adamw", **_LITGPT_LORA)),
    PublishedPeak("LitGPT QLoRA 7B", "Llama-2-7B", "qlora", 13.84, "GB", *LITGPT,
                  dict(batch_size=1, optimizer="paged_adamw", kbit_prepared=False, **_LITGPT_LORA),
                  not_modelled=_BNB_041),
    PublishedPeak("LitGPT LoRA 13B", "Llama-2-13B", "lora", 38.12, "GB", *LITGPT,
                  dict(batch_size=1, optimizer="adamw", **_LITGPT_LORA)),
    PublishedPeak("LitGPT QLoRA 13B", "Llama-2-13B", "qlora", 22.55, "GB", *LITGPT,
                  dict(batch_size=1, optimizer="paged_adamw", kbit_prepared=False, **_LITGPT_LORA),
                  not_modelled=_BNB_041),
    # ---- torchtune, May 2024: Llama-2-7B, batch 4 x 2048 tokens on one RTX 4090 ----
    # Configs (same commit): llama2/7B_{qlora,lora}_single_device.yaml, 7B_full_low_memory.yaml:
    # bf16, activation checkpointing on; the memory stats of that commit divide by 1e9.
    PublishedPeak("torchtune QLoRA 7B", "Llama-2-7B", "qlora", 12.3, "GB", *TORCHTUNE_2405,
                  dict(batch_size=4, seq_len=2048, optimizer="adamw", gradient_checkpointing=True,
                       lora_r=8, lora_targets="all-linear", kbit_prepared=False),
                  not_modelled="torch.compile; torchao's NF4 in place of bitsandbytes'"),
    PublishedPeak("torchtune LoRA 7B", "Llama-2-7B", "lora", 21.3, "GB", *TORCHTUNE_2405,
                  dict(batch_size=4, seq_len=2048, optimizer="adamw", gradient_checkpointing=True,
                       lora_r=8, lora_targets=QV)),
    PublishedPeak("torchtune full 7B", "Llama-2-7B", "full", 24.1, "GB", *TORCHTUNE_2405,
                  dict(batch_size=4, seq_len=2048, optimizer="paged_adamw", gradient_checkpointing=True),
                  optimizer_in_backward=True),
    # ---- torchtune, Sep 2024: Llama-3.1-8B, batch 2, packed to 2048 tokens, compiled, one 4090 ----
    # The README names the GPU, not the flags: these are the default single-device configs of that
    # commit (llama3_1/8B_*_single_device.yaml): bf16, checkpointing, chunked cross-entropy.
    PublishedPeak("torchtune full 8B", "Llama-3.1-8B", "full", 18.9, "GiB", *TORCHTUNE_2409,
                  dict(batch_size=2, seq_len=2048, optimizer="paged_adamw_8bit", gradient_checkpointing=True),
                  optimizer_in_backward=True, not_modelled="torch.compile; chunked cross-entropy",
                  assumed="flags of the default 8B_full_single_device.yaml"),
    PublishedPeak("torchtune LoRA 8B", "Llama-3.1-8B", "lora", 16.2, "GiB", *TORCHTUNE_2409,
                  dict(batch_size=2, seq_len=2048, optimizer="adamw", gradient_checkpointing=True,
                       lora_r=8, lora_targets=QV),
                  not_modelled="torch.compile; chunked cross-entropy",
                  assumed="flags of the default 8B_lora_single_device.yaml"),
    PublishedPeak("torchtune QLoRA 8B", "Llama-3.1-8B", "qlora", 7.4, "GiB", *TORCHTUNE_2409,
                  dict(batch_size=2, seq_len=2048, optimizer="adamw", gradient_checkpointing=True,
                       lora_r=8, lora_targets="all-linear", kbit_prepared=False),
                  not_modelled="torch.compile; chunked cross-entropy; torchao's NF4",
                  assumed="flags of the default 8B_qlora_single_device.yaml"),
    # ---- torchtune, Nov 2024: Llama-3.2-3B on an A100, batch 2 x 4096 packed tokens, bf16, each
    # technique added to those above it ----
    PublishedPeak("torchtune full 3B, packed", "Llama-3.2-3B", "full", 60.0, "GiB", *TORCHTUNE_2411,
                  dict(batch_size=2, seq_len=4096, optimizer="adamw"),
                  assumed="torch AdamW: the rows above '+ 8-bit AdamW'"),
    PublishedPeak("torchtune full 3B, + checkpointing", "Llama-3.2-3B", "full", 24.9, "GiB", *TORCHTUNE_2411,
                  dict(batch_size=2, seq_len=4096, optimizer="adamw", gradient_checkpointing=True),
                  not_modelled="torch.compile; chunked cross-entropy",
                  assumed="torch AdamW: the rows above '+ 8-bit AdamW'"),
    PublishedPeak("torchtune LoRA 3B", "Llama-3.2-3B", "lora", 8.5, "GiB", *TORCHTUNE_2411,
                  dict(batch_size=2, seq_len=4096, optimizer="adamw", gradient_checkpointing=True,
                       lora_r=64, lora_targets=ALL_BUT_K),
                  not_modelled="torch.compile; chunked cross-entropy; activation offloading to CPU",
                  assumed="rank and targets of the default 3B_lora_single_device.yaml"),
    PublishedPeak("torchtune QLoRA 3B", "Llama-3.2-3B", "qlora", 4.6, "GiB", *TORCHTUNE_2411,
                  dict(batch_size=2, seq_len=4096, optimizer="adamw", gradient_checkpointing=True,
                       lora_r=64, lora_targets=ALL_BUT_K, kbit_prepared=False),
                  not_modelled="torch.compile; chunked cross-entropy; activation offloading to CPU",
                  assumed="rank and targets of the default 3B_qlora_single_device.yaml"),
    # ---- QLoRA: Guanaco-65B "on a single 48GB GPU" (a bound, not a measured peak) ----
    # finetune_guanaco_65b.sh: batch 1, 16 + 512 tokens, r=64 on all linear layers, dropout 0.05,
    # bf16, checkpointing, paged 32-bit AdamW (qlora.py's default); qlora.py casts the embeddings
    # and head back to bf16 after prepare_model_for_kbit_training.
    PublishedPeak("QLoRA paper 65B", "LLaMA-65B", "qlora", 48, "GB", *QLORA,
                  dict(batch_size=1, seq_len=528, optimizer="paged_adamw", gradient_checkpointing=True,
                       lora_r=64, lora_targets="all-linear", lora_dropout=0.05, kbit_prepared=False),
                  kind="fits in", not_modelled="adapters in bf16 (counted in fp32 here)"),
    # ---- LoRA: GPT-3 175B, summed over V100s under model parallelism ----
    PublishedPeak("LoRA paper 175B full", "GPT-3 175B", "full", 1.2, "TB", *LORA,
                  dict(dtype=torch.float16, batch_size=1, seq_len=2048, optimizer="adamw",
                       gradient_checkpointing=True),
                  assumed="fp16, batch 1 x 2048 tokens, checkpointing (not reported)"),
    PublishedPeak("LoRA paper 175B LoRA", "GPT-3 175B", "lora", 350, "GB", *LORA,
                  dict(dtype=torch.float16, batch_size=1, seq_len=2048, optimizer="adamw",
                       gradient_checkpointing=True, lora_r=4, lora_targets=QV),
                  assumed="fp16, batch 1 x 2048 tokens, checkpointing (not reported)"),
]
# fmt: on


def predict(peak: PublishedPeak) -> MemoryEstimate:
    """`estimate` for the published run, counted as PyTorch's allocator counters see it.

    A paged optimizer's state is in CUDA unified memory (cudaMallocManaged), which the allocator's
    counters do not include; a step fused into the backward pass frees each gradient once applied.
    """
    setup = TrainingSetup(peak.method, **{**BASE_SETUP, **peak.config})
    est = estimate(SHAPES[peak.model], setup)
    if setup.optimizer_name.startswith("paged"):
        est.optimizer = 0
    if peak.optimizer_in_backward:
        est.gradients = 0
    est.label = f"{peak.run}: {est.label}"
    return est


def compare(peaks: list[PublishedPeak] = PEAKS) -> list[dict]:
    """One row per published peak: reported and predicted GiB, their ratio, and what differs."""
    rows = []
    for peak in peaks:
        est = predict(peak)
        rows.append(
            {
                "run": peak.run,
                "method": peak.method,
                "reported": f"{peak.reported:g} {peak.unit}",
                "published_gib": peak.reported_bytes / GiB,
                "predicted_gib": est.total / GiB,
                "predicted_over_published": est.total / peak.reported_bytes,
                "kind": peak.kind,
                "counter": peak.counter,
                "not_modelled": peak.not_modelled,
                "assumed": peak.assumed,
                "source": peak.url,
            }
        )
    return rows


def plot_comparison(rows: list[dict], ax=None, band: float | None = None):
    """Predicted against published on log axes, with the line y = x (and y = x·band, x/band).

    Filled markers: runs whose settings the source states and the estimator models; open: the
    rest (their `not_modelled` and `assumed` say why). A grey triangle is a bound ("fits in").
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 5))[1]
    for i, (method, marker) in enumerate({"full": "s", "lora": "o", "qlora": "^"}.items()):
        for partly in (False, True):
            sel = [
                r
                for r in rows
                if r["method"] == method
                and r["kind"] == "measured"
                and bool(r["not_modelled"] or r["assumed"]) == partly
            ]
            if sel:
                x, y = [r["published_gib"] for r in sel], [r["predicted_gib"] for r in sel]
                face = "none" if partly else f"C{i}"
                label = method + (" (partly modelled)" if partly else "")
                ax.scatter(
                    x, y, marker=marker, s=45, facecolors=face, edgecolors=f"C{i}", label=label
                )
    for r in rows:
        if r["kind"] == "fits in":  # the estimate should sit below y = x
            label = f"{r['run']}: fits in (a bound)"
            ax.scatter(
                r["published_gib"], r["predicted_gib"], marker="v", s=60, color="grey", label=label
            )
    lo = min(min(r["published_gib"], r["predicted_gib"]) for r in rows) / 1.5
    hi = max(max(r["published_gib"], r["predicted_gib"]) for r in rows) * 1.5
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="estimate = published")
    if band:
        for f in (band, 1 / band):
            label = f"x {band:g} and / {band:g}" if f == band else None
            ax.plot([lo, hi], [lo * f, hi * f], color="black", lw=0.6, ls=":", label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel="published peak (GiB)",
        ylabel="estimate (GiB)",
        title="the estimator against published fine-tuning runs",
    )
    ax.legend(fontsize=7, loc="upper left")
    return ax
