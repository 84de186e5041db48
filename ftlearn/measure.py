"""Measuring memory and time (03_sft, 04_lora, 06_qlora, 07_peft_methods): what a step really takes.

`measure_peak` runs a function and returns the peak bytes of tensor memory it allocated;
`training_peak` measures a few optimizer steps of a model that is already built; `StepStats` does
both for a Trainer run. They count what the estimator of 06 (`ftlearn.estimator`) predicts, so a
notebook can put the two side by side. Results are in bytes: divide by `ftlearn.estimator.MiB`.
`snapshot` and `changed` count what training changed (06: the 4-bit weights, the adapters), and
`optimizer_state_bytes` what an optimizer really keeps (06: 8-bit AdamW).
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from ftlearn.compat import allocation_events, loaded_4bit_codes
from ftlearn.estimator import OPTIMIZER_BYTES
from ftlearn.quantization import model_bytes


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C++ writes to fd 2 (kineto prints 'profiler_start/stop' lines there)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class PeakProbe:
    """Start, then stop: the peak bytes of tensor memory allocated in between, above the start.

    CUDA: `torch.cuda.max_memory_allocated()` after a reset, minus what was allocated at the start.
    CPU: torch has no allocation counter, and RSS mixes in the interpreter, libraries and malloc's
    caching. So the probe runs `torch.profiler` with `profile_memory=True`: torch's CPU allocator
    then reports every tensor allocation and free with its size and address; replaying them in
    time order gives the exact peak of live tensor bytes. Only frees of tensors allocated after
    `start()` count, matched by address: the profiler also reports the free of a tensor that an
    earlier probe saw allocated, and counting it lowered a later peak (0 for an 8 MB allocation;
    CI measured 06's QLoRA peak at 11.7 MiB against 25.1 on every other run that way).
    """

    def __init__(self, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"measuring memory supports 'cuda' and 'cpu', not '{self.device}'.")
        self._prof, self._start = None, 0

    def start(self) -> PeakProbe:
        """Begin recording, after a full garbage collection (garbage from earlier work is gone)."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            self._prof.start()
        return self

    def stop(self) -> int:
        """Stop recording; the peak bytes above the start."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self._start
        with _quiet_stderr():
            self._prof.stop()
        events = sorted(allocation_events(self._prof))
        self._prof = None
        live = peak = 0
        mine: dict[int, int] = {}  # address -> bytes, for tensors allocated since start()
        for _, address, nbytes in events:  # nbytes is negative for a free
            if nbytes > 0:
                mine[address] = nbytes
            elif mine.pop(address, None) is None:
                continue  # a tensor from before start(): not part of this peak
            live += nbytes
            peak = max(peak, live)
        return peak


def measure_peak(fn: Callable[[], object], device: str | None = None) -> int:
    """Peak bytes of tensor memory `fn` allocates above what was allocated when it started.

    See `PeakProbe` for how (CUDA: the allocator's own counter; CPU: torch.profiler's record of
    every allocation). Let `fn` build the model and optimizer, or add `model_bytes(model)` for
    what existed before.
    """
    probe = PeakProbe(device).start()
    try:
        fn()
    finally:
        peak = probe.stop()
    return peak


try:  # a Trainer callback; transformers is always installed with the course
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object


class StepStats(TrainerCallback):
    """Measures a Trainer run: the peak memory of its first `memory_steps` steps and each step's time.

    The peak of a training run is reached once the optimizer state exists, at the second step, so
    profiling a few steps (not the whole run, which the CPU profiler slows by ~20%) gives it.
    `peak` is relative to the start of training: add `model_bytes(model)` for the total.
    `step_seconds` is the median time of the steps after the profiled ones.
    """

    def __init__(self, memory_steps: int = 3, device: str | None = None):
        self.memory_steps, self.device = memory_steps, device
        self.peak: int | None = None
        self.times: list[float] = []
        self._probe, self._t0 = None, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._probe = PeakProbe(self.device).start()

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)
        if self._probe is not None and state.global_step >= self.memory_steps:
            self.peak, self._probe = self._probe.stop(), None

    def on_train_end(self, args, state, control, **kwargs):
        if self._probe is not None:
            self.peak, self._probe = self._probe.stop(), None

    @property
    def step_seconds(self) -> float:
        """Median seconds per optimizer step, profiled steps left out when others exist."""
        unprofiled = self.times[self.memory_steps :] or self.times
        return float(statistics.median(unprofiled)) if unprofiled else float("nan")


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float = 1e-4):
    """The optimizer the estimator calls `name`: torch's AdamW or SGD, bitsandbytes' 8- or 32-bit AdamW."""
    params = list(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw"):
        from ftlearn.quantization import require_bitsandbytes

        optim = require_bitsandbytes().optim
        # Paging moves the state to CPU RAM under GPU memory pressure: CUDA only (on CPU,
        # bitsandbytes warns and falls back to the unpaged optimizer, which this picks directly).
        paged = name.startswith("paged") and torch.cuda.is_available()
        if name == "paged_adamw":
            return (optim.PagedAdamW if paged else optim.AdamW32bit)(params, lr=lr)
        return (optim.PagedAdamW8bit if paged else optim.AdamW8bit)(params, lr=lr)
    raise ValueError(f"Unknown optimizer '{name}': use one of {tuple(OPTIMIZER_BYTES)}.")


def training_peak(
    model,
    batch_size: int = 8,
    seq_len: int = 128,
    optimizer: str = "adamw",
    steps: int = 2,
    seed: int = 0,
    loss: str = "logits",
) -> dict[str, int]:
    """Measure `steps` training steps of a model that is already built (full, peft LoRA or QLoRA).

    Returns bytes: `weights` (`model_bytes`, what exists before the step), `step` (the peak the
    steps add: gradients, optimizer state, activations) and `total`, the number `estimate(...).total`
    predicts. Two steps by default, because AdamW creates its state during the first `step()`:
    only the second forward and backward run with the optimizer state in memory, as every later
    step does; gradients are set to None after each step. The steps train on random tokens of
    exactly `seq_len` (no padding): measure a copy. Gradient checkpointing is measured if the
    model has it enabled (it works in train mode only). `loss="trl"` computes the loss as TRL's
    SFTTrainer does, with its fused LM head (this patches the model's forward: another reason to
    measure a copy).
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    tokens = tokens.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    kwargs = {}
    if loss == "trl":
        from ftlearn.compat import add_trl_fused_lm_head

        add_trl_fused_lm_head(model)  # as SFTTrainer does (a TRL internal: ftlearn.compat)
        kwargs["fused_lm_head"] = True
    elif loss != "logits":
        raise ValueError(
            f"Unknown loss '{loss}': use 'logits' (model(labels=...)) or 'trl' (TRL's SFTTrainer)."
        )

    def run() -> None:
        opt = make_optimizer(optimizer, params)
        for _ in range(steps):
            model(input_ids=tokens, labels=tokens, **kwargs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    weights = model_bytes(model)
    step = measure_peak(run, device.type)
    return {"weights": weights, "step": step, "total": weights + step}


def adamw_state_bytes(optimizer) -> int:
    """Bytes an AdamW optimizer really holds in its two moments (exp_avg, exp_avg_sq), measured."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the Trainer's one
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for key, t in state.items()
        if key in ("exp_avg", "exp_avg_sq")
    )


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor in an optimizer's state, each storage once, measured.

    Any optimizer: torch's AdamW (exp_avg, exp_avg_sq) or bitsandbytes' 8-bit ones (state1, state2,
    their absmax per block and the code tables `qmap1`, `qmap2`, which one storage may serve for
    several parameters, hence "once"). bitsandbytes keeps a tensor under `min_8bit_size` values
    (4,096) in 32 bits: on a small model that is most adapters (06_qlora, exercise 3).
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the Trainer's one
    seen: dict[int, int] = {}
    for state in optimizer.state.values():
        for t in state.values():
            if torch.is_tensor(t) and t.numel():
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def snapshot(model, keep: Callable[[torch.nn.Parameter], bool]) -> dict[str, torch.Tensor]:
    """Copies of the parameters that `keep` selects, by name: compare them after training with `changed`.

    `keep=lambda p: p.dtype == torch.uint8` picks bitsandbytes' packed 4-bit weights (two codes a
    byte); `lambda p: p.requires_grad` the parameters that train.
    """
    return {n: loaded_4bit_codes(p).clone() for n, p in model.named_parameters() if keep(p)}


def changed(before: dict[str, torch.Tensor], model) -> tuple[int, int]:
    """(elements that differ from the snapshot `before`, elements compared), in `model` now."""
    now = dict(model.named_parameters())
    missing = [n for n in before if n not in now]
    if missing:
        raise KeyError(
            f"{len(missing)} tensors of the snapshot are not in the model (first: {missing[0]}): "
            "snapshot the model that trains (trainer.model, after make_trainer), not another copy."
        )
    diff = 0
    for name, old in before.items():
        new = loaded_4bit_codes(now[name])  # bitsandbytes may have repacked it for its CPU kernel
        if new.shape != old.shape:
            raise ValueError(f"{name} changed shape {tuple(old.shape)} -> {tuple(new.shape)}.")
        diff += int((new != old).sum())
    return diff, sum(t.numel() for t in before.values())
