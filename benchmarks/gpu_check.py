"""The GPU check: the course's GPU path on one lent GPU, every part time-boxed, in about 9 minutes.

    bash scripts/gpu_check.sh                      # on the GPU machine (benchmarks/README.md)
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu-check   # every part, tiny shapes, CPU

The GPU machine has no model hub, so the check uses the embedded tiny models and models of real
shapes built from their configs with random weights (`ftlearn.shapes.llama_config`): memory and
speed depend on shapes, not on weight values. Parts:

- notebooks: every notebook on the tiny models, device cuda, twice: as Colab's T4 (FTLEARN_EMULATE=t4:
  CUDA memory capped at 15 GiB, bf16 reported missing, so the profile trains in fp16) and as the GPU
  is (bf16). In parallel, one kernel each, with a final cell that reports the dtype and peak memory.
- estimator: `ftlearn.estimator.estimate(...).total` against `training_peak` (torch.cuda's peak) for
  full fine-tuning, LoRA and QLoRA at SmolLM2-360M and SmolLM2-1.7B, and QLoRA at Qwen2.5-7B, in
  the dtypes `ftlearn.precision` trains them in on a bf16 GPU.
- paged: QLoRA with bitsandbytes' paged 8-bit AdamW, in a plain loop and through the course's
  SFTTrainer (`optim="paged_adamw_8bit"`).
- throughput: full fine-tuning of SmolLM2-1.7B's shape, mixed and pure bf16, as model FLOPs
  utilisation: 6 x parameters x tokens/s over the GPU's datasheet peak (`PEAK_TFLOPS`).

Each part runs in a subprocess with its own time box, so one that hangs or runs out of memory
leaves the others' rows; the notebooks run beside the estimator and paged parts (memory is counted
per process), the throughput part alone at the end. It writes one table, gpu_check_<date>_<gpu>.md
and .json, into --out ($OUT on the device machine, else benchmarks/results/), and the tracebacks of
whatever failed into gpu_check_<date>_<gpu>_failures.txt beside them.
`--cpu-smoke` runs every part on tiny shapes on the CPU, for tests/test_gpu_check.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024**2

# Dense 16-bit tensor-core peaks from the vendors' datasheets, TFLOP/s (no sparsity): the MFU
# denominator. H100 and H200 SXM share the chip (989.4 bf16); on the lent H200 an 8192^3 bf16
# matmul through torch ran at 769-798 (/work/.library/device/KINDS.md), ~80% of this.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}

# Seconds per part on the GPU (9 min in all): the notebooks run beside estimator -> paged.
BUDGET = {"notebooks": 390, "estimator": 260, "paged": 90, "throughput": 100}
SMOKE_BUDGET = {"notebooks": 120, "estimator": 120, "paged": 120, "throughput": 120}
PARTS = tuple(BUDGET)
PASSES = {"t4": {"FTLEARN_EMULATE": "t4"}, "bf16": {}}  # notebook passes: extra environment
NOTEBOOK_ORDER = ("03", "04", "01", "06", "07", "05", "02", "00")  # longest first (tiny timings)
ESTIMATE_BAND = (0.8, 1.2)  # measured / estimated: "ok" inside, "off" outside (tests hold ±20%)
PROBE = "GPU_CHECK_PROBE "


@dataclass
class Row:
    """One line of the results table."""

    part: str
    check: str
    status: str  # "ok", "off" (a measurement outside its band), "FAIL", "timeout", "skipped"
    measured: str = ""
    expected: str = ""
    ratio: float | None = None
    seconds: float | None = None
    note: str = ""
    detail: str = field(default="", repr=False)  # a traceback: the failures file, not the table


@dataclass(frozen=True)
class Case:
    """One estimator measurement: a model shape trained with a method at a batch size."""

    shape: str  # a name in ftlearn.shapes.MODELS, or "smoke" (a tiny Llama)
    method: str  # "full", "lora", "qlora"
    batch: int
    seq: int
    checkpointing: bool = False
    optimizer: str = "adamw"  # torch's: all of its state is on torch's books (paged: see `paged`)


# The profiles' own sizes: t4 and gpu-large train batch 16 x 256 tokens, LoRA r=16 on every linear
# layer; Qwen2.5-7B is gpu-large's QLoRA model, here at 4 x 512 with checkpointing.
GPU_CASES = (
    Case("SmolLM2-360M", "full", 16, 256),
    Case("SmolLM2-360M", "lora", 16, 256),
    Case("SmolLM2-360M", "qlora", 16, 256),
    Case("SmolLM2-1.7B", "full", 16, 256),
    Case("SmolLM2-1.7B", "lora", 16, 256),
    Case("SmolLM2-1.7B", "qlora", 16, 256),
    Case("Qwen2.5-7B", "qlora", 4, 512, checkpointing=True),
)
SMOKE_CASES = (
    Case("smoke", "full", 2, 32),
    Case("smoke", "qlora", 2, 32),
)  # qlora: LoRA's code too
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def smoke_shape():
    """A Llama small enough for the CPU smoke run (hidden 64, 2 layers, vocabulary 512)."""
    from ftlearn.shapes import ModelShape

    return ModelShape(hidden=64, layers=2, intermediate=128, vocab=512, heads=4, kv_heads=2)


def shape_of(name: str):
    """The ModelShape a case names."""
    from ftlearn.shapes import MODELS

    return smoke_shape() if name == "smoke" else MODELS[name]


def device() -> str:
    """cuda where there is one, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_label() -> str:
    """A short name for file names: h200, a100, t4... or cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0)
    for key in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return key.lower()
    return "".join(c for c in name.lower().replace("nvidia", "") if c.isalnum())[:16] or "gpu"


def peak_tflops() -> float | None:
    """The datasheet's dense 16-bit peak of this GPU (TFLOP/s), None for a CPU or an unknown GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in name.lower()), None)


def free_memory() -> None:
    """Drop what the last case left: Python's garbage, torch's cached blocks."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_profile(name: str = "gpu-large"):
    """A profile as `profiles.choose` makes it on this machine: cuda and bf16 where present."""
    import torch

    from ftlearn.profiles import get

    if device() == "cuda":
        half = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return replace(get(name), device="cuda", dtype=half)
    return replace(get(name), device="cpu", dtype="float32")


def autocast(dtype_name: str):
    """torch.autocast on CUDA for a 16-bit compute dtype, as the Trainer's bf16/fp16 flags do."""
    import torch

    if device() != "cuda" or dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, dtype_name))


def build_model(case: Case, load_dtype: str, quantized: bool, workdir: Path):
    """A random model of the case's shape, on the device: built in place, or saved then loaded in NF4.

    bitsandbytes quantizes as `from_pretrained` loads, so a QLoRA model is saved (16-bit safetensors,
    15 GB at 7B) and loaded back through the path a learner's model takes.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from ftlearn.quantization import bnb_config
    from ftlearn.shapes import llama_config

    config = llama_config(shape_of(case.shape))
    dev = device()
    torch.manual_seed(0)
    if not quantized:
        with torch.device(dev):
            return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, load_dtype))
    folder = workdir / f"{case.shape}-random"
    if not (folder / "config.json").exists():
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, load_dtype))
        model.save_pretrained(folder)
        del model
        free_memory()
    return AutoModelForCausalLM.from_pretrained(
        folder,
        quantization_config=bnb_config("nf4", compute_dtype=getattr(torch, load_dtype)),
        device_map={"": dev},
        dtype=getattr(torch, load_dtype),
    )


def enable_checkpointing(model) -> None:
    """Gradient checkpointing, non-reentrant, under transformers 5.2x's name where it has it."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model, case: Case):
    """peft LoRA on every linear layer (the profiles' r=16); QLoRA: prepared as TRL prepares it."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from ftlearn.lora import lora_config
    from ftlearn.shapes import LLAMA_LINEAR

    if case.method == "qlora":  # as 06_qlora prepares it: what is not 4-bit goes to fp32
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=case.checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif case.checkpointing:
        enable_checkpointing(model)
    config = lora_config(
        r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], targets=list(LLAMA_LINEAR)
    )
    return get_peft_model(model, config)


# ---------------------------------------------------------------------------------------------
# Part: the estimator against the measured peak
# ---------------------------------------------------------------------------------------------


def estimator_rows(smoke: bool, workdir: Path) -> Iterator[Row]:
    """One row per case: measured peak (weights + step) against `estimate(...).total`."""
    from ftlearn.estimator import TrainingSetup, estimate
    from ftlearn.measure import training_peak
    from ftlearn.precision import policy
    from ftlearn.shapes import LLAMA_LINEAR

    profile = gpu_profile()
    for case in SMOKE_CASES if smoke else GPU_CASES:
        label = f"{case.shape} {case.method}, batch {case.batch} x {case.seq}" + (
            ", checkpointing" if case.checkpointing else ""
        )
        start = time.perf_counter()
        try:
            precision = policy(profile, case.method)
            model = build_model(case, precision.load_dtype, case.method == "qlora", workdir)
            if case.method != "full":
                model = add_lora(model, case)
            elif case.checkpointing:
                enable_checkpointing(model)
            with autocast(precision.compute_dtype):
                measured = training_peak(
                    model, case.batch, case.seq, optimizer=case.optimizer, loss="trl"
                )
            setup = TrainingSetup(
                case.method,
                batch_size=case.batch,
                seq_len=case.seq,
                optimizer=case.optimizer,
                gradient_checkpointing=case.checkpointing,
                lora_r=LORA["r"],
                lora_targets=LLAMA_LINEAR,
                lora_dropout=LORA["dropout"] if case.method != "full" else 0.0,
                loss="trl",
                device=device(),
                kbit_prepared=True,  # add_lora prepares as 06 does
                **precision.estimate_args(),
            )
            predicted = estimate(shape_of(case.shape), setup)
            ratio = measured["total"] / predicted.total
            ok = ESTIMATE_BAND[0] <= ratio <= ESTIMATE_BAND[1]
            yield Row(
                "estimator",
                label,
                "ok" if ok else "off",
                measured=f"{measured['total'] / MIB:,.0f} MiB",
                expected=f"{predicted.total / MIB:,.0f} MiB",
                ratio=round(ratio, 3),
                seconds=round(time.perf_counter() - start, 1),
                note=f"{precision.mode}; weights {measured['weights'] / MIB:,.0f} measured, "
                f"{predicted.weights / MIB:,.0f} estimated MiB",
            )
        except Exception as err:  # a case that fails leaves the others' rows
            yield failed("estimator", label, err, start)
        finally:
            model = None
            free_memory()


def failed(part: str, check: str, err: BaseException, start: float) -> Row:
    """A FAIL row from an exception, its traceback kept for the failures file."""
    return Row(
        part,
        check,
        "FAIL",
        seconds=round(time.perf_counter() - start, 1),
        note=f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}",
        detail=traceback.format_exc(),
    )


# ---------------------------------------------------------------------------------------------
# Part: QLoRA with a paged 8-bit optimizer
# ---------------------------------------------------------------------------------------------


def paged_rows(smoke: bool, workdir: Path) -> Iterator[Row]:
    """A plain QLoRA loop with PagedAdamW8bit, then the course's SFTTrainer with that optimizer."""
    import math

    import torch

    from ftlearn.measure import make_optimizer
    from ftlearn.precision import policy

    case = Case(
        "smoke" if smoke else "SmolLM2-360M", "qlora", 2 if smoke else 8, 32 if smoke else 256
    )
    label = f"loop: {case.shape} QLoRA, paged_adamw_8bit, 4 steps"
    start = time.perf_counter()
    try:
        precision = policy(gpu_profile(), "qlora")
        model = add_lora(build_model(case, precision.load_dtype, True, workdir), case)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer("paged_adamw_8bit", params, lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, model.config.vocab_size, (case.batch, case.seq), generator=gen)
        tokens = tokens.to(device())
        losses = []
        if device() == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(4):  # the same batch: its loss must fall
            with autocast(precision.compute_dtype):
                loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        states = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
        paged = sum(t.numel() * t.element_size() for t in states if getattr(t, "is_paged", False))
        ok = all(map(math.isfinite, losses)) and losses[-1] < losses[0]
        on_cuda = type(opt).__name__ == "PagedAdamW8bit"
        yield Row(
            "paged",
            label,
            "ok" if ok and (on_cuda or device() == "cpu") else "FAIL",
            measured=f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {type(opt).__name__}; "
            f"paged state {paged / MIB:.1f} MiB",
            expected="loss falls; PagedAdamW8bit on CUDA (AdamW8bit on CPU), paged state",
            seconds=round(time.perf_counter() - start, 1),
            note="paged (managed) memory is outside torch.cuda's counters",
        )
    except Exception as err:
        yield failed("paged", label, err, start)
    finally:
        model = opt = None
        free_memory()
    yield from trainer_paged_rows(smoke)


def trainer_paged_rows(smoke: bool) -> Iterator[Row]:
    """The course's QLoRA path (06): tiny-base in NF4, SFTTrainer, optim="paged_adamw_8bit"."""
    import math

    from ftlearn.lora import lora_config
    from ftlearn.models import load
    from ftlearn.quantization import bnb_config
    from ftlearn.training import make_trainer, settings_for
    from ftlearn.world import load_split

    steps, batch = (3, 2) if smoke else (8, 16)  # 3: the first step warms up at lr 0
    label = f"SFTTrainer: tiny-base QLoRA, optim=paged_adamw_8bit, {steps} steps of {batch}"
    start = time.perf_counter()
    try:
        profile = gpu_profile("tiny")
        model, tok = load(profile, "base", quantization=bnb_config("nf4"))
        settings = settings_for(
            profile,
            tempfile.mkdtemp(prefix="gpu-check-paged-"),
            method="qlora",
            max_steps=steps,
            batch_size=batch,
            logging_steps=1,
            learning_rate=profile.lora_learning_rate,
            # the same `batch` rows every step, in order: their loss must fall
            extra={"optim": "paged_adamw_8bit", "train_sampling_strategy": "sequential"},
        )
        rows = load_split("instructions_train")[:batch] * steps
        trainer = make_trainer(model, tok, rows, settings, peft_config=lora_config(profile))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
        name = f"{type(opt).__module__.split('.')[0]}.{type(opt).__name__}"
        paged = getattr(opt, "is_paged", False)
        ok = len(losses) >= 2 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]
        ok = ok and name.startswith("bitsandbytes") and (paged or device() == "cpu")
        yield Row(
            "paged",
            label,
            "ok" if ok else "FAIL",
            measured=f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {name}, paged {paged}",
            expected="loss falls; bitsandbytes' optimizer, paged on CUDA",
            seconds=round(time.perf_counter() - start, 1),
            note=f"profile tiny on {profile.device}, {profile.dtype}",
        )
    except Exception as err:
        yield failed("paged", label, err, start)
    finally:
        free_memory()


# ---------------------------------------------------------------------------------------------
# Part: throughput as model FLOPs utilisation
# ---------------------------------------------------------------------------------------------


def full_step(model, opt, tokens, compute: str) -> None:
    """One step of full fine-tuning on `tokens`: forward (autocast), backward, AdamW."""
    with autocast(compute):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def throughput_rows(smoke: bool, workdir: Path) -> Iterator[Row]:
    """Full fine-tuning steps of SmolLM2-1.7B's shape: tokens/s and 6·N·tokens/s over the peak."""
    import torch

    shape_name = "smoke" if smoke else "SmolLM2-1.7B"
    batch, seq = (2, 32) if smoke else (8, 1024)
    warmup, timed = (1, 1) if smoke else (3, 10)
    modes = ["fp32"] if device() == "cpu" else ["mixed bf16", "pure bf16"]
    peak = peak_tflops()
    n = shape_of(shape_name).n_params
    for mode in modes:
        label = f"{shape_name} full, {mode}, batch {batch} x {seq}, fused AdamW"
        start = time.perf_counter()
        try:
            load_dtype = "bfloat16" if mode == "pure bf16" else "float32"
            compute = "float32" if mode == "fp32" else "bfloat16"
            model = build_model(Case(shape_name, "full", batch, seq), load_dtype, False, workdir)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device() == "cuda")
            gen = torch.Generator().manual_seed(0)
            tokens = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
            tokens = tokens.to(device())

            for _ in range(warmup):
                full_step(model, opt, tokens, compute)
            sync = torch.cuda.synchronize if device() == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            for _ in range(timed):
                full_step(model, opt, tokens, compute)
            sync()
            seconds = (time.perf_counter() - t0) / timed
            tokens_s = batch * seq / seconds
            tflops = 6 * n * tokens_s / 1e12
            yield Row(
                "throughput",
                label,
                "ok",
                measured=f"{tokens_s:,.0f} tokens/s; {tflops:.3g} TFLOP/s",
                expected=f"peak {peak:g} TFLOP/s" if peak else "no datasheet peak (CPU)",
                ratio=round(tflops / peak, 3) if peak else None,
                seconds=round(time.perf_counter() - start, 1),
                note=f"MFU = 6 x {n / 1e9:.2f}B params x tokens/s / peak; "
                f"{seconds * 1000:.0f} ms a step, mean of {timed} after {warmup} warm-up",
            )
        except Exception as err:
            yield failed("throughput", label, err, start)
        finally:
            model = opt = None
            free_memory()


# ---------------------------------------------------------------------------------------------
# Part: the notebooks, as a T4 and as this GPU
# ---------------------------------------------------------------------------------------------

PROBE_CELL = f"""\
import json as _json, torch as _torch
from ftlearn.hardware import detect as _detect
_hw, _p, _cuda = _detect(check_hub=False), globals().get("profile"), _torch.cuda.is_available()
print({PROBE!r} + _json.dumps({{
    "gpu": _hw.gpu_name, "bf16 reported": _hw.bf16, "device": getattr(_p, "device", None),
    "dtype": getattr(_p, "dtype", None), "profile": getattr(_p, "name", None),
    "peak MiB": _torch.cuda.max_memory_allocated() / 2**20 if _cuda else None,
}}))
"""

SMOKE_NOTEBOOK = [
    "from ftlearn.profiles import setup\n\nprofile = setup(check_hub=False)",
    "import torch\n\nprint(torch.ones(2, device=profile.device).sum().item())",
]


def notebook_list(smoke: bool, only: list[str] | None, workdir: Path) -> list[Path]:
    """The notebooks to run: the course's (longest first), or a two-cell one for the smoke run."""
    if smoke and not only:
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(src) for src in SMOKE_NOTEBOOK]
        path = workdir / "smoke.ipynb"
        nbformat.write(nb, path)
        return [path]
    found = sorted((REPO / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
    rank = {
        p: NOTEBOOK_ORDER.index(p.name[:2]) if p.name[:2] in NOTEBOOK_ORDER else 99 for p in found
    }
    chosen = [p for p in found if not only or any(p.name.startswith(o) for o in only)]
    return sorted(chosen, key=lambda p: rank[p])


def execute_notebook(path: Path, cell_timeout: int) -> dict:
    """Run one notebook with nbclient, in this process's environment; what the probe cell printed."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE_CELL))
    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    result: dict = {"error": None, "cell": None}
    try:
        client.execute()
    except CellExecutionError as err:
        result["error"] = f"{err.ename}: {err.evalue}"[:300]
        result["detail"] = str(err)[-4000:]
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for number, cell in enumerate(code_cells, 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and result["cell"] is None:
                result["cell"] = number
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            for line in text.splitlines():
                if line.startswith(PROBE):
                    result["probe"] = json.loads(line[len(PROBE) :])
    result["seconds"] = time.perf_counter() - start
    return result


def notebook_env(pass_name: str, workdir: Path, nb: Path, smoke: bool) -> dict:
    """The environment of one notebook run: tiny profile, one runs/ folder each, the pass's extras."""
    env = {k: v for k, v in os.environ.items() if k != "FTLEARN_EMULATE"}
    env.update(
        FTLEARN_PROFILE="tiny",
        FTLEARN_RUNS_DIR=str(workdir / f"runs-{pass_name}" / nb.stem),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1" if smoke else "2",  # 8 kernels at once on 16 cores
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    env.update(PASSES[pass_name])
    return env


def notebook_row(pass_name: str, nb: Path, result: dict) -> Row:
    """The table row of one notebook run."""
    probe = result.get("probe") or {}
    check = f"{nb.stem} [{pass_name}]"
    peak = probe.get("peak MiB")
    measured = f"{result.get('seconds', 0):.0f} s"
    if peak is not None:
        measured += f"; peak {peak:,.0f} MiB"
    if probe:
        measured += f"; {probe.get('device')} {probe.get('dtype')}"
    expected = "runs, self-checks pass"
    notes = []
    status = "ok" if result.get("error") is None else "FAIL"
    if pass_name == "t4":
        expected += "; bf16 reported missing; peak < 15 GiB"
        if probe and probe.get("bf16 reported"):
            status, notes = "FAIL", [*notes, "bf16 reported: the emulation did not take"]
        if probe.get("device") == "cuda" and probe.get("dtype") == "float32":
            notes.append("trained in fp32: the tiny profile takes no 16-bit dtype on CUDA")
    if result.get("error"):
        notes.insert(0, f"cell {result.get('cell')}: {result['error']}")
        if "missing or outdated packages" in result["error"]:  # 00's environment check
            notes.append(
                "the GPU image's own packages (its torch, no JupyterLab), not the GPU path"
            )
    return Row(
        "notebooks",
        check,
        status,
        measured=measured,
        expected=expected,
        seconds=round(result.get("seconds", 0), 1),
        note="; ".join(notes),
        detail=result.get("detail", ""),
    )


def notebooks_rows(
    smoke: bool, workdir: Path, budget: float, only: list[str] | None = None
) -> Iterator[Row]:
    """Every (pass, notebook) in its own process, several at once, until the budget runs out."""
    jobs = [(p, nb) for nb in notebook_list(smoke, only, workdir) for p in PASSES]
    workers = 2 if smoke else max(1, min(8, (os.cpu_count() or 2) // 2))
    deadline = time.monotonic() + budget
    running: list[tuple[str, Path, subprocess.Popen, Path, float]] = []
    cell_timeout = int(budget)
    while jobs or running:
        while jobs and len(running) < workers and time.monotonic() < deadline - 20:
            pass_name, nb = jobs.pop(0)
            out = workdir / f"nb-{pass_name}-{nb.stem}.json"
            cmd = [sys.executable, __file__, "--execute-notebook", str(nb), "--result", str(out)]
            cmd += ["--cell-timeout", str(cell_timeout)]
            proc = subprocess.Popen(
                cmd,
                env=notebook_env(pass_name, workdir, nb, smoke),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its kernel too is killed with the group at the deadline
            )
            running.append((pass_name, nb, proc, out, time.perf_counter()))
        for item in list(running):
            pass_name, nb, proc, out, started = item
            if proc.poll() is None and time.monotonic() < deadline:
                continue
            if proc.poll() is None:
                kill_group(proc)
                running.remove(item)
                yield Row(
                    "notebooks",
                    f"{nb.stem} [{pass_name}]",
                    "timeout",
                    seconds=round(time.perf_counter() - started, 1),
                    note=f"stopped at the part's {budget:.0f} s time box",
                )
                continue
            running.remove(item)
            if out.exists():
                yield notebook_row(pass_name, nb, json.loads(out.read_text()))
            else:
                yield Row(
                    "notebooks",
                    f"{nb.stem} [{pass_name}]",
                    "FAIL",
                    seconds=round(time.perf_counter() - started, 1),
                    note=f"the runner exited with {proc.returncode} and no result",
                )
        if time.monotonic() >= deadline - 20 and not running:
            for pass_name, nb in jobs:
                yield Row("notebooks", f"{nb.stem} [{pass_name}]", "skipped", note="no time left")
            jobs = []
        time.sleep(0.2)


def kill_group(proc: subprocess.Popen) -> None:
    """End a process started with start_new_session, and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ---------------------------------------------------------------------------------------------
# Running the parts, time-boxed, and writing the table
# ---------------------------------------------------------------------------------------------

PART_FUNCTIONS: dict[str, Callable[..., Iterator[Row]]] = {
    "estimator": estimator_rows,
    "paged": paged_rows,
    "throughput": throughput_rows,
}


def part_rows(part: str, smoke: bool, workdir: Path, budget: float, only=None) -> Iterator[Row]:
    """The rows of one part, in this process."""
    if part == "notebooks":
        return notebooks_rows(smoke, workdir, budget, only)
    return PART_FUNCTIONS[part](smoke, workdir)


def start_part(part: str, smoke: bool, workdir: Path, budget: float, only=None):
    """Start one part in a subprocess that writes its rows to a JSON-lines file as they come."""
    rows_file = workdir / f"rows-{part}.jsonl"
    cmd = [sys.executable, __file__, "--worker", part, "--rows", str(rows_file)]
    cmd += ["--workdir", str(workdir), "--part-budget", str(budget)]
    cmd += ["--cpu-smoke"] if smoke else []
    cmd += ["--notebooks", *only] if only else []
    log = open(workdir / f"log-{part}.txt", "w")  # noqa: SIM115 (closed in finish_part)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return {
        "part": part,
        "proc": proc,
        "rows": rows_file,
        "log": log,
        "budget": budget,
        "start": time.monotonic(),
    }


def finish_part(job: dict, wait: bool = True) -> list[Row] | None:
    """The part's rows once it ends or its time box (+15 s to write its last rows) runs out."""
    proc, limit = job["proc"], job["start"] + job["budget"] + 15
    while proc.poll() is None:
        if not wait:
            return None
        if time.monotonic() > limit:
            kill_group(proc)
            break
        time.sleep(0.5)
    job["log"].close()
    rows = []
    if job["rows"].exists():
        rows = [Row(**json.loads(line)) for line in job["rows"].read_text().splitlines() if line]
    if proc.returncode not in (0, None):
        tail = (job["log"].name and Path(job["log"].name).read_text()[-3000:]) or ""
        status = "timeout" if time.monotonic() > limit else "FAIL"
        rows.append(
            Row(
                job["part"],
                "the part itself",
                status,
                seconds=round(time.monotonic() - job["start"], 1),
                note=f"exit {proc.returncode}; rows before it are kept",
                detail=tail,
            )
        )
    return rows


def run_parts(
    parts: list[str], smoke: bool, workdir: Path, budgets: dict, only=None, in_process: bool = False
) -> list[Row]:
    """Notebooks beside estimator -> paged, then throughput alone; or everything in this process."""
    if in_process:  # for tests: no time boxes, no subprocesses
        return [r for p in parts for r in part_rows(p, smoke, workdir, budgets[p], only)]
    rows: list[Row] = []
    notebooks = (
        start_part("notebooks", smoke, workdir, budgets["notebooks"], only)
        if ("notebooks" in parts)
        else None
    )
    for part in ("estimator", "paged"):
        if part in parts:
            rows += finish_part(start_part(part, smoke, workdir, budgets[part]))
    if notebooks:
        rows = finish_part(notebooks) + rows
    if "throughput" in parts:  # alone on the GPU: a speed
        rows += finish_part(start_part("throughput", smoke, workdir, budgets["throughput"]))
    return rows


def versions() -> dict[str, str]:
    """The versions the check ran with (the GPU machine's image, plus the carried wheels)."""
    import importlib.metadata

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "bitsandbytes",
        "datasets",
        "nbclient",
        "ipykernel",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def machine() -> dict:
    """What ran the check: the GPU (name, memory), CUDA, the peak used for MFU."""
    import torch

    info = {"device": device(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu memory GiB": round(props.total_memory / 1024**3, 1),
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
            "peak TFLOP/s (datasheet, dense bf16)": peak_tflops(),
        }
    return info


def table(result: dict) -> str:
    """The results as markdown: what ran where, then one row per check."""
    meta = result["meta"]
    lines = [
        f"# GPU check, {meta['date']}, {meta['machine'].get('gpu', 'CPU')}"
        + (" (CPU smoke run: tiny shapes)" if meta["smoke"] else ""),
        "",
        f"Machine: {json.dumps(meta['machine'])}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}  ",
        f"Wall time: {meta['seconds']:.0f} s of a {meta['budget']:.0f} s plan; "
        + ", ".join(f"{s} {n}" for s, n in meta["counts"].items()),
        "",
        "| part | check | status | measured | expected | ratio | s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        cells = [
            r["part"],
            r["check"],
            r["status"],
            r["measured"],
            r["expected"],
            "" if r["ratio"] is None else f"{r['ratio']:.3f}",
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
            r["note"],
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += [
        "",
        "ratio: estimator = measured / estimated peak (ok within "
        f"{ESTIMATE_BAND[0]}-{ESTIMATE_BAND[1]}); throughput = model FLOPs utilisation "
        "(6 x params x tokens/s over the datasheet peak).",
    ]
    return "\n".join(lines) + "\n"


def write(result: dict, out_dir: Path) -> list[Path]:
    """gpu_check_<date>_<gpu>.md, .json and, if anything failed, _failures.txt, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gpu_check_{result['meta']['date']}_{result['meta']['gpu label']}"
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(table(result))
    rows = [{k: v for k, v in r.items() if k != "detail"} for r in result["rows"]]
    js.write_text(json.dumps({"meta": result["meta"], "rows": rows}, indent=1) + "\n")
    written = [md, js]
    details = [
        f"## {r['part']}: {r['check']}\n{r['detail']}" for r in result["rows"] if r["detail"]
    ]
    if details:
        written.append(out_dir / f"{stem}_failures.txt")
        written[-1].write_text("\n\n".join(details) + "\n")
    return written


def check(
    parts: list[str],
    smoke: bool,
    out_dir: Path,
    scale: float = 1.0,
    only=None,
    in_process: bool = False,
) -> dict:
    """Run the parts, write the table; the result as a dict (meta and rows)."""
    budgets = {k: v * scale for k, v in (SMOKE_BUDGET if smoke else BUDGET).items()}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        rows = run_parts(parts, smoke, Path(tmp), budgets, only, in_process)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    plan = (
        max(budgets["notebooks"] * ("notebooks" in parts), budgets["estimator"] + budgets["paged"])
        + budgets["throughput"]
    )
    result = {
        "meta": {
            "date": datetime.date.today().isoformat(),
            "smoke": smoke,
            "gpu label": gpu_label(),
            "machine": machine(),
            "versions": versions(),
            "parts": parts,
            "budget": plan,
            "seconds": time.monotonic() - start,
            "counts": counts,
        },
        "rows": [asdict(r) for r in rows],
    }
    result["files"] = [str(p) for p in write(result, out_dir)]
    return result


def trim_wheel(path: Path, keep_cuda: str) -> int:
    """Drop bitsandbytes' libraries for other CUDA majors, ROCm and XPU from its wheel; bytes saved.

    The wheel carries one library per CUDA version (43 MB in all); the GPU machine's torch is built
    for one, so the rest need not travel. RECORD loses their lines, so pip installs it as usual.
    """
    before = path.stat().st_size
    tmp = path.with_suffix(".trim")

    def keep(name: str) -> bool:
        lib = Path(name).name
        if not lib.startswith("libbitsandbytes_"):
            return True
        kind = lib.removeprefix("libbitsandbytes_").split(".")[0]
        return kind == "cpu" or kind.startswith(f"cuda{keep_cuda}")

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not keep(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(x for x in lines if keep(x.split(",")[0])) + "\n").encode()
            dst.writestr(item, data)
    tmp.replace(path)
    return before - path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    """Entry point: the check (default), or one of its workers (--worker, --execute-notebook)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke",
        "--dry-run",
        action="store_true",
        dest="smoke",
        help="every part on tiny shapes on the CPU: the table's format, in seconds",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {PARTS}")
    parser.add_argument("--notebooks", nargs="*", help="notebook number prefixes (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the table (default: $OUT, else benchmarks/results; "
        "smoke runs: runs/gpu_check)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every time box")
    parser.add_argument("--in-process", action="store_true", help="no subprocesses (tests)")
    # internal: one part, or one notebook, in its own process
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--part-budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--execute-notebook", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cell-timeout", type=int, default=600, help=argparse.SUPPRESS)
    parser.add_argument("--trim-wheel", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep-cuda", default="13", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.trim_wheel:
        saved = trim_wheel(args.trim_wheel, args.keep_cuda)
        print(
            f"{args.trim_wheel.name}: {saved / MIB:.0f} MiB of other CUDA versions' libraries dropped"
        )
        return 0
    if args.execute_notebook:
        result = execute_notebook(args.execute_notebook, args.cell_timeout)
        args.result.write_text(json.dumps(result))
        return 0
    if args.worker:
        with open(args.rows, "a") as f:
            for row in part_rows(
                args.worker, args.smoke, args.workdir, args.part_budget, args.notebooks
            ):
                f.write(json.dumps(asdict(row)) + "\n")
                f.flush()
        return 0

    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: choose from {PARTS}")
    if not args.smoke and device() != "cuda":
        parser.error("no CUDA GPU here: run with --cpu-smoke (tiny shapes on the CPU)")
    if args.out:
        out = args.out
    elif args.smoke:  # a smoke run's table is no result: git-ignored runs/
        out = REPO / "runs" / "gpu_check"
    else:  # the device machine's $OUT comes back; run locally, the table goes with the results
        out = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    result = check(parts, args.smoke, out, args.scale, args.notebooks, args.in_process)
    print(table(result))
    print("written:", *result["files"], sep="\n  ")
    bad = [r for r in result["rows"] if r["status"] in ("FAIL", "timeout")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
