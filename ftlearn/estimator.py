"""How much memory fine-tuning takes (06_qlora): an estimate from a model's shape, and "will it fit?".

The estimate splits a training step into weights, gradients, optimizer state and activations, from
nothing but a model's shape (`ftlearn.shapes`) and one `TrainingSetup`. `ftlearn.measure` measures
the same step, so a notebook can put the two side by side; tests hold the estimate to ±20% of the
measurement on small random Llamas, and to published peaks of 3B-175B runs
(`ftlearn.published_peaks`). `weight_bytes` is the weights part on its own, per storage format
(05_quantization).

Units: bytes, shown in MiB and GiB (2**20 and 2**30 bytes), as torch and nvidia-smi count them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

from ftlearn.shapes import (
    LLAMA_LINEAR,
    MODELS,
    ModelShape,
    as_shape,
    fmt_params,
    lora_params,
    resolve_targets,
)

MiB = 2**20
GiB = 2**30

METHODS = ("full", "lora", "qlora")
LOSSES = ("logits", "trl")  # model(labels=...), or TRL SFTTrainer's fused LM head

# Bytes of optimizer state per trainable parameter (`p`: bytes of the parameter itself).
# torch's AdamW keeps two moments (m, v) in the parameter's dtype; bitsandbytes' 8-bit AdamW keeps
# them in 1 byte each plus an fp32 absmax per block of 256 (tensors under 4,096 values stay 32-bit,
# ignored here); the paged variant has the same bytes but can spill them to CPU RAM under pressure;
# SGD without momentum keeps nothing (momentum would add one copy of p).
OPTIMIZER_BYTES = {
    "adamw": lambda p: 2 * p,
    "adamw_8bit": lambda p: 2 * (1 + 4 / 256),
    "paged_adamw_8bit": lambda p: 2 * (1 + 4 / 256),
    "paged_adamw": lambda p: 2 * 4,  # bitsandbytes' 32-bit AdamW: fp32 moments whatever p is
    "sgd": lambda p: 0,
}
# The optimizer each method gets when a setup names none: QLoRA's recipe pages 8-bit AdamW.
DEFAULT_OPTIMIZER = {"full": "adamw", "lora": "adamw", "qlora": "paged_adamw_8bit"}

# Memory as torch.cuda reports it (GiB), rounded. Colab's free tier is a T4.
GPUS = {
    "T4": 15.0,
    "Colab (free T4)": 15.0,
    "L4": 22.5,
    "RTX 4090": 24.0,
    "A100 40GB": 40.0,
    "A100 80GB": 80.0,
    "H100 80GB": 80.0,
}

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype or a name ("fp32", "bf16", "fp16", "float32", ...)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(
                f"Unknown dtype '{dtype}': use a torch dtype or one of {list(_DTYPES)}."
            )
        dtype = _DTYPES[dtype]
    return torch.empty(0, dtype=dtype).element_size()


def fmt_bytes(n: float) -> str:
    """'1.23 GiB' or '45.6 MiB'."""
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# The training set-up: every setting the estimate reads, with one set of defaults
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSetup:
    """One training step, as far as memory goes: method, precision, batch, optimizer, LoRA.

    The defaults are the course's: LoRA as `ftlearn.lora.lora_config` makes it (r=8 on every
    linear layer), one sequence of 512 tokens in bf16, AdamW, the loss of `model(labels=...)`.
    Change a field with `dataclasses.replace(setup, batch_size=4)`.
    """

    method: str = "lora"  # "full", "lora" or "qlora"
    dtype: torch.dtype | str = torch.bfloat16  # weights and compute (QLoRA: the compute dtype)
    # Full fine-tuning under autocast, as the Trainer's bf16=True / fp16=True runs it: fp32
    # weights, gradients and AdamW moments (16 bytes a parameter), activations in `dtype`.
    # False: everything in `dtype`. LoRA and QLoRA keep their adapters in fp32 either way.
    mixed_precision: bool = True
    batch_size: int = 1
    seq_len: int = 512  # tokens of every sequence in the batch: the longest batch gives the peak
    optimizer: str | None = None  # a key of OPTIMIZER_BYTES; None: DEFAULT_OPTIMIZER[method]
    gradient_checkpointing: bool = False
    lora_r: int = 8
    lora_targets: str | tuple[str, ...] = "all-linear"  # module names, "all-linear" or "attention"
    lora_dropout: float = 0.0  # > 0: each adapted layer keeps a dropped-out copy of its input
    kbit_prepared: bool = True  # QLoRA: prepare_model_for_kbit_training upcasts the rest to fp32
    loss: str = "logits"  # "logits": model(labels=...); "trl": TRL SFTTrainer's fused LM head
    device: str = "cuda"  # "cuda", "cpu" or "mps" (as cpu): dropout's mask, TRL's loss kernels

    def __post_init__(self):
        """Check every setting, naming the allowed values of the one that is wrong."""
        if self.method not in METHODS:
            raise ValueError(f"Unknown method '{self.method}': use one of {METHODS}.")
        if self.optimizer is not None and self.optimizer not in OPTIMIZER_BYTES:
            raise ValueError(
                f"Unknown optimizer '{self.optimizer}': use one of {tuple(OPTIMIZER_BYTES)}."
            )
        if self.loss not in LOSSES:
            raise ValueError(
                f"Unknown loss '{self.loss}': use 'logits' (model(labels=...)) or 'trl' "
                "(TRL's SFTTrainer)."
            )
        if self.device not in (
            "cuda",
            "cpu",
            "mps",
        ):  # a profile's device, as hardware.detect names it
            raise ValueError(f"device='{self.device}': use 'cuda', 'cpu' or 'mps'.")
        if self.batch_size < 1 or self.seq_len < 1 or self.lora_r < 1:
            raise ValueError(
                f"batch_size={self.batch_size}, seq_len={self.seq_len} and lora_r={self.lora_r} "
                "must all be at least 1."
            )
        dtype_bytes(self.dtype)  # an unknown dtype fails here, with the names it takes
        targets = self.lora_targets
        if not isinstance(
            targets, str
        ):  # a list or peft's set: a tuple, so the setup stays hashable
            object.__setattr__(self, "lora_targets", tuple(targets))
        unknown = sorted(set(resolve_targets(self.lora_targets)) - set(LLAMA_LINEAR))
        if unknown:
            raise ValueError(f"Unknown LoRA targets {unknown}: use names from {LLAMA_LINEAR}.")

    @property
    def optimizer_name(self) -> str:
        """The optimizer the step uses: the one named, or the method's default."""
        return self.optimizer or DEFAULT_OPTIMIZER[self.method]

    @property
    def targets(self) -> tuple[str, ...]:
        """The linear layers that train: all of them in full fine-tuning, else LoRA's targets."""
        if self.method == "full":
            return LLAMA_LINEAR
        return tuple(dict.fromkeys(resolve_targets(self.lora_targets)))  # order kept, no repeats

    def summary(self, optimizer: bool = True) -> str:
        """'bfloat16, adamw, batch 1 x 512 tokens, checkpointing, LoRA r=8 on all-linear'."""
        dtype = str(self.dtype).replace("torch.", "")
        if self.mixed_precision and self.method == "full" and dtype_bytes(self.dtype) < 4:
            dtype += " autocast, fp32 weights"
        lora = "" if self.method == "full" else f", LoRA r={self.lora_r} on {self._targets_name()}"
        return (
            f"{dtype}{', ' + self.optimizer_name if optimizer else ''}, batch {self.batch_size} x "
            f"{self.seq_len} tokens{', checkpointing' if self.gradient_checkpointing else ''}{lora}"
        )

    def _targets_name(self) -> str:
        t = self.lora_targets
        return t if isinstance(t, str) else ", ".join(t)


# ---------------------------------------------------------------------------------------------
# What the weights take, per format (05_quantization)
# ---------------------------------------------------------------------------------------------

WEIGHT_FORMATS = ("fp32", "bf16", "fp16", "int8", "nf4", "fp4")


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of a model's weights by part, as transformers and bitsandbytes store them."""

    linear: int  # the decoder's linear layers: floats, int8 codes, or two 4-bit codes a byte
    scales: int  # what bitsandbytes keeps beside them: absmax, code tables, int8 row scales
    embeddings: int  # token embeddings and LM head (one tensor when tied): never quantized
    norms: int  # the RMSNorm weights
    label: str = ""

    @property
    def params(self) -> int:
        """Bytes of the parameters themselves: what `model.get_memory_footprint()` counts, less buffers."""
        return self.linear + self.embeddings + self.norms

    @property
    def total(self) -> int:
        """Everything: the parameters and bitsandbytes' scales (what `model_bytes` counts)."""
        return self.params + self.scales


def _nf4_tensor_bytes(n: int, blocksize: int, double_quant: bool) -> tuple[int, int]:
    """(packed codes, quantization state) bytes of one 4-bit tensor of n weights, as bitsandbytes keeps them.

    One byte holds two codes. Per block of `blocksize` weights an absmax: fp32, or with double
    quantization one uint8, plus an fp32 scale per 256 of them, an fp32 offset and the 256-entry
    fp32 table of the 8-bit scales. Every tensor also carries its own 16-entry fp32 codebook.
    """
    blocks = -(-n // blocksize)
    state = 16 * 4  # the NF4 (or FP4) codebook
    if double_quant:
        state += blocks + 4 * -(-blocks // 256) + 4 + 256 * 4
    else:
        state += 4 * blocks
    return (n + 1) // 2, state


def weight_bytes(
    model,
    fmt: str = "bf16",
    dtype=torch.bfloat16,
    kbit_prepared: bool = False,
    double_quant: bool = True,
    blocksize: int = 64,
) -> WeightBytes:
    """The bytes of `model`'s weights (anything `as_shape` takes) stored in `fmt`.

    fp32/bf16/fp16: every parameter in that format. int8, nf4, fp4 (bitsandbytes via
    `BitsAndBytesConfig`): only the decoder's linear layers are quantized; transformers keeps the
    embeddings, the LM head and the norms in `dtype`, the `dtype` the model was loaded in.
    `kbit_prepared=True`: after `peft.prepare_model_for_kbit_training`, which casts every 16-bit
    parameter that is not 4-bit (int8 weights stay int8) to fp32: for Llama-3.1-8B's 128k vocabulary
    that is 1.05B parameters at 4 bytes, more than its 4-bit linear layers take.
    int8 keeps one fp32 scale per output row (`SCB`). Exact to the byte, for every format.
    """
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"Unknown format '{fmt}': use one of {WEIGHT_FORMATS}.")
    shape = as_shape(model)
    n_embed, n_norm = shape.embedding_params, shape.norm_params
    linears = [shape.linear_shapes()[name] for name in LLAMA_LINEAR] * shape.layers
    if fmt in ("fp32", "bf16", "fp16"):
        p = dtype_bytes(fmt)
        return WeightBytes(shape.linear_params * p, 0, n_embed * p, n_norm * p, fmt)
    p = dtype_bytes(dtype)
    rest = 4 if kbit_prepared else p  # prepare_model_for_kbit_training: fp16/bf16 -> fp32
    if fmt == "int8":
        linear, scales = shape.linear_params, 4 * sum(out for _, out in linears)
    else:
        parts = [_nf4_tensor_bytes(a * b, blocksize, double_quant) for a, b in linears]
        linear, scales = sum(c for c, _ in parts), sum(s for _, s in parts)
    name = fmt + (" (double quant)" if fmt != "int8" and double_quant else "")
    rest_name = "fp32" if rest == 4 else str(dtype).replace("torch.", "")
    label = f"{name}, embeddings and norms in {rest_name}"
    return WeightBytes(linear, scales, n_embed * rest, n_norm * rest, label)


# ---------------------------------------------------------------------------------------------
# The estimate of one training step
# ---------------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Bytes of one training step, by kind. `total` is the peak, not the sum (see `table`)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    label: str = ""

    @property
    def total(self) -> int:
        """The peak: weights + optimizer + the larger of gradients and activations.

        They do not peak together: backward frees each layer's saved activations as it writes
        that layer's gradients, so the step peaks either as backward starts (all activations, no
        gradients yet; gradients are set to None after each step) or as it ends (all gradients).
        """
        return self.weights + self.optimizer + max(self.gradients, self.activations)

    def table(self) -> str:
        """The breakdown as aligned lines in GiB/MiB."""
        rows = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
        ]
        lines = [self.label] if self.label else []
        lines += [f"  {name:<16}{fmt_bytes(value):>12}" for name, value in rows]
        lines.append(
            f"  {'total (peak)':<16}{fmt_bytes(self.total):>12}"
            "   = weights + optimizer + max(gradients, activations)"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        """Same as `table()`."""
        return self.table()


def trl_loss_tile(tokens: int, dtype_bytes: int) -> int:
    """Bytes of the buffer in which TRL's SFTTrainer computes the loss (its fused, chunked LM head).

    TRL 1.x never builds the batch x length x vocabulary logits: it projects up to 4,096 tokens at
    a time onto 32,768 vocabulary entries at a time, in one buffer of that size whatever the
    vocabulary: 0.5 GiB in fp32 from 4,096 tokens a batch, small next to a 128k vocabulary's
    logits, large next to a tiny model.
    """
    from ftlearn.compat import trl_chunk_sizes  # TRL's private constants: read in one place

    token_chunk, vocab_chunk = trl_chunk_sizes()
    return min(tokens, token_chunk) * vocab_chunk * dtype_bytes


def activation_bytes(shape: ModelShape, setup: TrainingSetup) -> dict[str, int]:
    """Bytes saved for backward, by part, in a Llama decoder trained with SDPA attention.

    Per layer and token, counted tensor by tensor (as autograd saves them) in the style of
    Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models" (2022),
    adapted to Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU) and to frozen weights:

    - always: the layer input (RMSNorm squares it), the residual after attention (second RMSNorm),
      q, k, v after RoPE and the attention output (SDPA saves them; flash/memory-efficient SDPA keeps
      no seq x seq matrix: eager attention would add ~2·heads·seq² per layer), and 3 x intermediate
      for the MLP (SiLU's input, its output and up_proj's output, which the product saves);
    - full fine-tuning: each RMSNorm's x·rsqrt(var) (to train its weight) and the input of every
      linear layer (to train the weight): 9·h + 2·kv + 4·i values per token in all;
    - LoRA: a frozen linear layer saves nothing (its input gradient needs only the weight), but
      each adapted one keeps its input for lora_A, upcast to an fp32 copy when the model is 16-bit
      (peft keeps adapters in fp32), plus r values for lora_B. With q, v targets: 5·h + 2·kv + 3·i.
      With `lora_dropout` > 0 every adapted layer keeps its own dropped-out fp32 copy of its input
      and dropout's mask instead: 1 byte per value on CUDA (a fused kernel), 4 elsewhere (on a
      CPU torch's dropout multiplies by a mask in the input's dtype).

    Then the head: the final norm's input (and, in full FT, its x·rsqrt and output) and the logits.
    The loss upcasts logits to fp32 and backward holds three b·s·vocab fp32 tensors at once
    (log-softmax output, its gradient, the logits' gradient): for a 128k vocabulary this is the
    largest single term. Gradient checkpointing keeps only each layer's input and recomputes one
    layer at a time in backward, so the peak holds one layer's activations or the head, not both.
    `loss="trl"`: TRL's SFTTrainer never builds the logits; its fused LM head works in one tile
    (`trl_loss_tile`) plus the final hidden states and their fp32 gradient; off CUDA, without
    Triton, the tile's softmax and gradient run as torch ops, with ~8 fp32 temporaries the size of
    the tile's used part (tokens x vocabulary) alive at once.
    With checkpointing, the backward of the recomputed layer also holds its MLP's gradients (gate,
    up and input: 2·i + h values per token) beside that layer's activations.
    The first layer's input is counted although, with a frozen embedding, LoRA does not save it.

    Measured on CPU (small random Llamas, batch 8 x 128), the total lands within 5% of the peak,
    except full fine-tuning with checkpointing, ~10% low: there the head's gradient and those of
    the layers already done sit beside the recomputed layer, which `total`'s max() ignores.
    """
    s = setup
    p, tokens = dtype_bytes(s.dtype), s.batch_size * s.seq_len
    h, kv, q, i = shape.hidden, shape.kv_dim, shape.q_dim, shape.intermediate
    full = s.method == "full"
    targets = set(s.targets)

    per_token = {  # bytes per token in one layer
        "layer input and residual": 2 * h * p,
        "q, k, v after RoPE": (q + 2 * kv) * p,
        "attention output": q * p,
        "MLP gate, SiLU(gate), up": 3 * i * p,
    }
    if full:
        per_token["RMSNorm x*rsqrt(var)"] = 2 * h * p
    # The tensor each linear layer reads; q, k, v share one and gate, up another.
    reads = {
        "q_proj": "norm1",
        "k_proj": "norm1",
        "v_proj": "norm1",
        "o_proj": "attn",
        "gate_proj": "norm2",
        "up_proj": "norm2",
        "down_proj": "mlp",
    }
    inputs = {name: shape.linear_shapes()[name][0] for name in LLAMA_LINEAR}
    if not full and s.lora_dropout > 0:
        # dropout(x) is a new fp32 tensor per adapted layer, and its mask is kept beside it
        mask = 1 if s.device == "cuda" else 4
        per_token["inputs of trained linears"] = (4 + mask) * sum(inputs[t] for t in targets)
    elif full or p == 4:  # the saved input is the tensor itself, shared by the layers that read it
        per_token["inputs of trained linears"] = p * sum(
            inputs[n] for n in {reads[t]: t for t in targets}.values()
        )
    else:  # peft casts x to the adapter's fp32: one copy per adapted layer
        per_token["inputs of trained linears"] = 4 * sum(inputs[t] for t in targets)
    if not full:
        per_token["LoRA lora_A outputs"] = 4 * s.lora_r * len(targets)

    layer = tokens * sum(per_token.values())
    # the final norm: its input (and, if its weight and lm_head train, x*rsqrt and its output)
    head = tokens * h * p * (3 if full else 1)
    if s.loss == "logits":
        logits = 3 * tokens * shape.vocab * 4
    else:  # "trl" (TrainingSetup checks the name)
        logits = trl_loss_tile(tokens, p) + tokens * h * (p + 4)
        if s.device != "cuda":
            from ftlearn.compat import trl_chunk_sizes

            token_chunk, vocab_chunk = trl_chunk_sizes()
            logits += 8 * min(tokens, token_chunk) * min(shape.vocab, vocab_chunk) * 4
    if s.gradient_checkpointing:
        layers = shape.layers * tokens * h * p  # each layer's input, kept for the recomputation
        workspace = (
            tokens * (2 * i + h) * p
        )  # the recomputed layer's MLP gradients, in its backward
        total = layers + max(layer + workspace, head + logits)
    else:
        layers = shape.layers * layer
        total = layers + head + logits
    return {"per_layer": layer, "layers": layers, "head": head, "logits": logits, "total": total}


def estimate(model, setup: TrainingSetup | None = None) -> MemoryEstimate:
    """Estimate the memory of one training step of `model` trained as `setup` says.

    `model`: a transformers config (or model), a ModelShape, a name in MODELS or billions of
    parameters. `setup`: a `TrainingSetup` (None: its defaults, LoRA as the course makes it).

    - weights: every parameter in `dtype` (full fine-tuning with `mixed_precision`: in fp32);
      QLoRA stores the decoder's linear layers in NF4 with double quantization (4.127 bits,
      `weight_bytes` to the byte) and the rest (embeddings, head, norms: 13% of Llama-3.1-8B) in
      `dtype`, or in fp32 with `kbit_prepared=True` (the default), because
      `peft.prepare_model_for_kbit_training` upcasts them (the QLoRA paper's script casts
      embeddings and head back to 16 bits: pass False for it). LoRA adapters are fp32, as peft
      makes them.
    - gradients and optimizer state: for trainable parameters only (all, or the adapters).
    - activations: see `activation_bytes`.

    Where it is off: autocast's short-lived 16-bit copies of the weights are not counted;
    multi-tensor (foreach) AdamW on CUDA holds ~one more copy of the trainable parameters during
    `step()`; CUDA's context and allocator fragmentation come on top (see `will_it_fit`);
    06_qlora compares it with published peaks of 3B-175B runs (`ftlearn.published_peaks`).
    """
    s = setup or TrainingSetup()
    shape = as_shape(model)
    p = dtype_bytes(s.dtype)
    if s.method == "full":
        master = 4 if s.mixed_precision else p  # autocast trains fp32 weights, computing in `dtype`
        trainable, trainable_bytes = shape.n_params, master
        weights = shape.n_params * master
    else:
        trainable, trainable_bytes = lora_params(shape, s.lora_r, s.lora_targets), 4
        if s.method == "lora":
            frozen = shape.n_params * p
        else:
            frozen = weight_bytes(shape, "nf4", s.dtype, kbit_prepared=s.kbit_prepared).total
        weights = frozen + trainable * trainable_bytes
    return MemoryEstimate(
        weights=round(weights),
        gradients=trainable * trainable_bytes,
        optimizer=round(trainable * OPTIMIZER_BYTES[s.optimizer_name](trainable_bytes)),
        activations=activation_bytes(shape, s)["total"],
        label=f"{s.method}, {fmt_params(shape.n_params)} params, {s.summary()}",
    )


# ---------------------------------------------------------------------------------------------
# Will it fit?
# ---------------------------------------------------------------------------------------------

# The set-up of 06's T4 table and will-it-fit control: a typical QLoRA run, all-linear adapters at
# r=16, checkpointing, one sequence of 512 tokens; full fine-tuning in mixed precision and LoRA on a
# 16-bit base when the method is changed (`replace(FIT_SETUP, method="full")`).
FIT_SETUP = TrainingSetup(method="qlora", gradient_checkpointing=True, lora_r=16)
FIT_MODEL = "Llama-3.2-1B"  # the control's first model, which its static table shows
OVERHEAD_GIB = 1.0  # kept free: the CUDA context (~0.5 GiB), kernels' workspaces, fragmentation


@dataclass
class Fit:
    """The answer of `will_it_fit`."""

    fits: bool
    needed_gib: float
    available_gib: float
    headroom_gib: float  # negative when it does not fit
    estimate: MemoryEstimate

    def __str__(self) -> str:
        """One line: the verdict, what is needed, what is usable."""
        verdict = "fits" if self.fits else "does not fit"
        return (
            f"{verdict}: needs {self.needed_gib:.1f} GiB of {self.available_gib:.1f} GiB usable "
            f"(headroom {self.headroom_gib:+.1f} GiB)"
        )


def will_it_fit(
    model,
    gpu: str | float = "T4",
    setup: TrainingSetup = FIT_SETUP,
    overhead_gib: float = OVERHEAD_GIB,
) -> Fit:
    """Does fine-tuning `model` as `setup` says fit on `gpu` (a name in GPUS, or its GiB)?

    `overhead_gib` is kept free for what `estimate` does not see: the CUDA context (~0.5 GiB),
    kernels' workspaces and allocator fragmentation. The default set-up is `FIT_SETUP`, a typical
    QLoRA run; `replace(FIT_SETUP, method="full")` asks the same of full fine-tuning.
    """
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise KeyError(f"Unknown GPU '{gpu}'. Known: {', '.join(GPUS)}; or pass its GiB.")
        capacity = GPUS[gpu]
    else:
        capacity = float(gpu)
    est = estimate(model, setup)
    available = capacity - overhead_gib
    needed = est.total / GiB
    return Fit(needed <= available, needed, available, available - needed, est)


def fit_rows(
    models: Iterable = tuple(MODELS),
    methods: Iterable[str] = METHODS,
    gpu: str | float = "T4",
    setup: TrainingSetup = FIT_SETUP,
) -> list[dict]:
    """One row per model: its parameters and, per method, the GiB needed (`full_gib`) and whether it fits (`full_fits`)."""
    rows = []
    for model in models:
        shape = as_shape(model)
        row = {
            "model": model if isinstance(model, str) else f"{shape.n_params / 1e9:.1f}B",
            "params": shape.n_params,
        }
        for method in methods:
            fit = will_it_fit(shape, gpu, replace(setup, method=method))
            row[f"{method}_gib"] = round(fit.needed_gib, 2)
            row[f"{method}_fits"] = fit.fits
        rows.append(row)
    return rows


def fit_table(
    models: Iterable = tuple(MODELS),
    methods: Iterable[str] = METHODS,
    gpu: str | float = "T4",
    setup: TrainingSetup = FIT_SETUP,
) -> str:
    """A plain-text table: GiB needed per model and method, marked ✓ where it fits on `gpu`."""
    methods = tuple(methods)
    optimizers = ", ".join(f"{m} {replace(setup, method=m).optimizer_name}" for m in methods)
    lines = [
        f"GPU: {gpu}; {setup.summary(optimizer=False)}; optimizers: {optimizers}",
        f"{'model':<16}{'params':>8}" + "".join(f"{m:>15}" for m in methods),
    ]
    for row in fit_rows(models, methods, gpu, setup):
        cells = [f"{row[f'{m}_gib']:>9.1f} GiB {'✓' if row[f'{m}_fits'] else '✗'}" for m in methods]
        lines.append(f"{row['model']:<16}{row['params'] / 1e9:>7.2f}B" + "".join(cells))
    return "\n".join(lines)


def fit_breakdown(
    model=FIT_MODEL, gpu: str | float = "T4", setup: TrainingSetup = FIT_SETUP
) -> dict[str, dict]:
    """Per method: the GiB of each part of `will_it_fit`'s estimate, the peak, what is usable, and a verdict."""
    table = {}
    for method in METHODS:
        fit = will_it_fit(model, gpu, replace(setup, method=method))
        est = fit.estimate
        table[method] = {
            "weights_gib": est.weights / GiB,
            "gradients_gib": est.gradients / GiB,
            "optimizer_gib": est.optimizer / GiB,
            "activations_gib": est.activations / GiB,
            "peak_gib": fit.needed_gib,
            "usable_gib": fit.available_gib,
            "fits": "✓" if fit.fits else "✗",
        }
    return table


def fit_widget(gpu: str = "T4", static: bool = True):
    """An ipywidgets control (model, method, batch, length, GPU); prints `fit_table` without it.

    `static=True` first displays the default selection (`FIT_MODEL`, `FIT_SETUP`, every method) as
    a table: a widget shows only in a live kernel, and that table is what GitHub and Colab's
    preview render in its place.
    """
    try:
        import ipywidgets as widgets
    except ImportError:
        print("ipywidgets is not installed: here is the static table instead.\n")
        print(fit_table(gpu=gpu))
        return None

    if static:
        import pandas as pd
        from IPython.display import display

        frame = pd.DataFrame(fit_breakdown(FIT_MODEL, gpu))
        frame.columns.name = f"{FIT_MODEL} on {gpu}, {FIT_SETUP.summary()}"
        display(frame.map(lambda v: round(v, 2) if isinstance(v, float) else v))

    s = FIT_SETUP
    controls = {
        "model": widgets.Dropdown(options=list(MODELS), value=FIT_MODEL, description="model"),
        "method": widgets.ToggleButtons(
            options=list(METHODS), value=s.method, description="method"
        ),
        "batch_size": widgets.IntSlider(value=s.batch_size, min=1, max=32, description="batch"),
        "seq_len": widgets.Dropdown(
            options=[256, 512, 1024, 2048, 4096], value=s.seq_len, description="tokens"
        ),
        "gpu": widgets.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
        "gradient_checkpointing": widgets.Checkbox(
            value=s.gradient_checkpointing, description="checkpointing"
        ),
    }

    def show(model, gpu, **changes):
        fit = will_it_fit(model, gpu, replace(FIT_SETUP, **changes))
        print(fit.estimate.table(), "\n", fit, sep="")

    class FitControl(widgets.VBox):
        # what a page without a live kernel prints in the widget's place (else "VBox(children=...")
        def __repr__(self) -> str:
            return (
                "[will-it-fit control: live in Jupyter and Colab; the table above is its default]"
            )

    out = widgets.interactive_output(show, controls)
    return FitControl([*controls.values(), out])
