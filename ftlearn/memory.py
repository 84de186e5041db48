"""How much memory fine-tuning takes (06_qlora): an estimator, a measurement, and "will it fit?".

The estimate splits a training step into weights, gradients, optimizer state and activations, from
nothing but a model's config. `measure_peak` measures the same step, so a notebook can put the two
side by side; tests hold the estimate to ±20% of the measurement on small random Llamas.

Units: GB means 1024**3 bytes, as torch and nvidia-smi count them.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ftlearn.quantization import model_bytes

GB = 1024**3
MB = 1024**2

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("full", "lora", "qlora")

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


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-style config that decide memory."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool = False
    head_dim: int | None = None  # None: hidden // heads

    @property
    def kv_dim(self) -> int:
        """Width of k and v: kv_heads * head_dim (smaller than hidden with grouped-query attention)."""
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def q_dim(self) -> int:
        """Width of q: heads * head_dim (usually hidden)."""
        return self.heads * (self.head_dim or self.hidden // self.heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Weights in the decoder layers' linear layers: what 4-bit quantization shrinks."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def n_params(self) -> int:
        """All parameters: linear layers, two RMSNorms per layer, the final norm, embeddings, head."""
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.linear_params + (2 * self.layers + 1) * self.hidden + embeddings

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """Read a transformers config (LlamaConfig, MistralConfig, Qwen2Config, ...)."""
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
            heads=config.num_attention_heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            head_dim=getattr(config, "head_dim", None),
        )


# Shapes copied from each model's config.json (parameter counts in the names).
MODELS = {
    "SmolLM2-135M": ModelShape(576, 30, 1536, 49152, 9, 3, tied=True),
    "SmolLM2-360M": ModelShape(960, 32, 2560, 49152, 15, 5, tied=True),
    "Qwen2.5-0.5B": ModelShape(896, 24, 4864, 151936, 14, 2, tied=True),
    "Llama-3.2-1B": ModelShape(2048, 16, 8192, 128256, 32, 8, tied=True),
    "SmolLM2-1.7B": ModelShape(2048, 24, 8192, 49152, 32, 32, tied=True),
    "Llama-3.2-3B": ModelShape(3072, 28, 8192, 128256, 24, 8, tied=True),
    "Mistral-7B": ModelShape(4096, 32, 14336, 32000, 32, 8),
    "Qwen2.5-7B": ModelShape(3584, 28, 18944, 152064, 28, 4),
    "Llama-3.1-8B": ModelShape(4096, 32, 14336, 128256, 32, 8),
    "Llama-2-13B": ModelShape(5120, 40, 13824, 32000, 40, 40),
    "Llama-3.1-70B": ModelShape(8192, 80, 28672, 128256, 64, 8),
}


def as_shape(model) -> ModelShape:
    """A ModelShape from a shape, a transformers config, a name in MODELS, or billions of params.

    For a bare parameter count, the closest model in MODELS is stretched to that size by changing
    its number of layers: a rough guide, good for "does 7B fit on a T4?".
    """
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        if model not in MODELS:
            raise KeyError(
                f"Unknown model '{model}'. Known: {', '.join(MODELS)}; or pass a config."
            )
        return MODELS[model]
    if isinstance(model, int | float):
        target = model * 1e9
        base = min(MODELS.values(), key=lambda s: abs(math.log(s.n_params / target)))
        per_layer = (
            base.n_params - base.vocab * base.hidden * (1 if base.tied else 2)
        ) / base.layers
        extra = (target - base.n_params) / per_layer
        return ModelShape(**{**base.__dict__, "layers": max(1, round(base.layers + extra))})
    return ModelShape.from_config(getattr(model, "config", model))


def llama_config(model):
    """A transformers LlamaConfig with the shape of `model` (anything `as_shape` takes).

    Memory depends on shapes, not on weight values: a randomly initialised model built from this
    config trains with the same bytes as the real checkpoint, with nothing to download.
    """
    from transformers import LlamaConfig

    shape = as_shape(model)
    return LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim or shape.hidden // shape.heads,
        tie_word_embeddings=shape.tied,
    )


def _dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype or a name ("fp32", "bf16", "fp16")."""
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    return torch.empty(0, dtype=names.get(dtype, dtype)).element_size()


def fmt_params(n: int) -> str:
    """'8.03B' or '135.0M'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def fmt_bytes(n: float) -> str:
    """'1.23 GB' or '45.6 MB'."""
    return f"{n / GB:.2f} GB" if abs(n) >= GB else f"{n / MB:.1f} MB"


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
    n_embed = shape.vocab * shape.hidden * (1 if shape.tied else 2)
    n_norm = (2 * shape.layers + 1) * shape.hidden
    linears = [shape.linear_shapes()[name] for name in LINEARS] * shape.layers
    if fmt in ("fp32", "bf16", "fp16"):
        p = _dtype_bytes(fmt)
        return WeightBytes(shape.linear_params * p, 0, n_embed * p, n_norm * p, fmt)
    p = _dtype_bytes(dtype)
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

    @property
    def sum_of_parts(self) -> int:
        """weights + gradients + optimizer + activations: what most calculators report (too high)."""
        return self.weights + self.gradients + self.optimizer + self.activations

    def table(self) -> str:
        """The breakdown as aligned lines in GB/MB."""
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


def _trl_chunks() -> tuple[int, int]:
    """(tokens, vocabulary entries) per tile of TRL's fused LM head, from the installed TRL."""
    from ftlearn.compat import trl_chunk_sizes  # TRL's private constants: read in one place

    return trl_chunk_sizes()


def trl_loss_tile(tokens: int, dtype_bytes: int) -> int:
    """Bytes of the buffer in which TRL's SFTTrainer computes the loss (its fused, chunked LM head).

    TRL 1.x never builds the batch x length x vocabulary logits: it projects up to 4,096 tokens at
    a time onto 32,768 vocabulary entries at a time, in one buffer of that size whatever the
    vocabulary: ~0.5 GB in fp32 from 4,096 tokens a batch, small next to a 128k vocabulary's logits,
    large next to a tiny model.
    """
    token_chunk, vocab_chunk = _trl_chunks()
    return min(tokens, token_chunk) * vocab_chunk * dtype_bytes


def activation_bytes(
    shape: ModelShape,
    batch_size: int,
    seq_len: int,
    dtype_bytes: int,
    method: str = "full",
    lora_targets: Iterable[str] = ("q_proj", "v_proj"),
    lora_r: int = 8,
    gradient_checkpointing: bool = False,
    lora_dropout: float = 0.0,
    loss: str = "logits",
    device: str = "cuda",
) -> dict[str, int]:
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
    if method not in METHODS:
        raise ValueError(f"Unknown method '{method}': use one of {METHODS}.")
    p, tokens = dtype_bytes, batch_size * seq_len
    h, kv, q, i = shape.hidden, shape.kv_dim, shape.q_dim, shape.intermediate
    full = method == "full"
    targets = (
        set(LINEARS) if full else set(LINEARS if lora_targets == "all-linear" else lora_targets)
    )

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
    inputs = {name: shape.linear_shapes()[name][0] for name in LINEARS}
    if not full and lora_dropout > 0:
        # dropout(x) is a new fp32 tensor per adapted layer, and its mask is kept beside it
        mask = 1 if device == "cuda" else 4
        per_token["inputs of trained linears"] = (4 + mask) * sum(inputs[t] for t in targets)
    elif full or p == 4:  # the saved input is the tensor itself, shared by the layers that read it
        per_token["inputs of trained linears"] = p * sum(
            inputs[n] for n in {reads[t]: t for t in targets}.values()
        )
    else:  # peft casts x to the adapter's fp32: one copy per adapted layer
        per_token["inputs of trained linears"] = 4 * sum(inputs[t] for t in targets)
    if not full:
        per_token["LoRA lora_A outputs"] = 4 * lora_r * len(targets)

    layer = tokens * sum(per_token.values())
    # the final norm: its input (and, if its weight and lm_head train, x*rsqrt and its output)
    head = tokens * h * p * (3 if full else 1)
    if loss == "logits":
        logits = 3 * tokens * shape.vocab * 4
    elif loss == "trl":
        logits = trl_loss_tile(tokens, p) + tokens * h * (p + 4)
        if device != "cuda":
            token_chunk, vocab_chunk = _trl_chunks()
            logits += 8 * min(tokens, token_chunk) * min(shape.vocab, vocab_chunk) * 4
    else:
        raise ValueError(
            f"Unknown loss '{loss}': use 'logits' (model(labels=...)) or 'trl' (TRL's SFTTrainer)."
        )
    if gradient_checkpointing:
        layers = shape.layers * tokens * h * p  # each layer's input, kept for the recomputation
        workspace = (
            tokens * (2 * i + h) * p
        )  # the recomputed layer's MLP gradients, in its backward
        total = layers + max(layer + workspace, head + logits)
    else:
        layers = shape.layers * layer
        total = layers + head + logits
    return {"per_layer": layer, "layers": layers, "head": head, "logits": logits, "total": total}


def lora_params(
    shape: ModelShape, r: int = 8, targets: Iterable[str] = ("q_proj", "v_proj")
) -> int:
    """Parameters LoRA trains: r * (in + out) for each adapted linear layer."""
    names = LINEARS if targets == "all-linear" else tuple(targets)
    unknown = set(names) - set(LINEARS)
    if unknown:
        raise ValueError(f"Unknown LoRA targets {sorted(unknown)}: use names from {LINEARS}.")
    return shape.layers * sum(r * sum(shape.linear_shapes()[t]) for t in names)


def estimate(
    model,
    method: str = "full",
    dtype=torch.bfloat16,
    batch_size: int = 1,
    seq_len: int = 512,
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    lora_r: int = 8,
    lora_targets: Iterable[str] = ("q_proj", "v_proj"),
    lora_dropout: float = 0.0,
    loss: str = "logits",
    device: str = "cuda",
    mixed_precision: bool = False,
    kbit_prepared: bool = True,
) -> MemoryEstimate:
    """Estimate the memory of one training step for full fine-tuning, LoRA or QLoRA.

    `model`: a transformers config (or model), a ModelShape, a name in MODELS or billions of
    parameters. `dtype`: what the weights are stored and computed in (QLoRA: the compute dtype).

    - weights: every parameter in `dtype`; QLoRA stores the decoder's linear layers in NF4 with
      double quantization (4.127 bits, `weight_bytes` to the byte) and the rest (embeddings, head,
      norms: 13% of Llama-3.1-8B) in `dtype`, or in fp32 with `kbit_prepared=True` (the default),
      because `peft.prepare_model_for_kbit_training` upcasts them (the QLoRA paper's script casts
      embeddings and head back to 16 bits: pass False for it). LoRA adapters are fp32, as peft
      makes them.
    - gradients and optimizer state: for trainable parameters only (all, or the adapters).
    - activations: see `activation_bytes` (`lora_dropout`, `loss` and `device` go to it).

    `mixed_precision=True` (full fine-tuning in fp16/bf16 autocast, as the Trainer's `fp16=True`
    or `bf16=True` does it): the weights, their gradients and AdamW's moments stay in fp32 (16 bytes
    a parameter), the activations are in `dtype`.

    Where it is off: autocast's short-lived 16-bit copies of the weights are not counted;
    multi-tensor (foreach) AdamW on CUDA holds ~one more copy of the trainable parameters during
    `step()`; CUDA's context and allocator fragmentation come on top (see `will_it_fit`);
    06_qlora compares it with published peaks of 7B-70B runs (`ftlearn.published_peaks`).
    """
    if optimizer not in OPTIMIZER_BYTES:
        raise ValueError(f"Unknown optimizer '{optimizer}': use one of {tuple(OPTIMIZER_BYTES)}.")
    shape = as_shape(model)
    p = _dtype_bytes(dtype)
    if method == "full":
        master = 4 if mixed_precision else p  # autocast trains fp32 weights, computing in `dtype`
        trainable, trainable_bytes = shape.n_params, master
        weights = shape.n_params * master
    elif method in ("lora", "qlora"):
        trainable, trainable_bytes = lora_params(shape, lora_r, lora_targets), 4
        if method == "lora":
            frozen = shape.n_params * p
        else:
            frozen = weight_bytes(shape, "nf4", dtype, kbit_prepared=kbit_prepared).total
        weights = frozen + trainable * trainable_bytes
    else:
        raise ValueError(f"Unknown method '{method}': use one of {METHODS}.")
    acts = activation_bytes(
        shape,
        batch_size,
        seq_len,
        p,
        method,
        lora_targets,
        lora_r,
        gradient_checkpointing,
        lora_dropout,
        loss,
        device,
    )
    dtype_name = str(dtype).replace("torch.", "")
    if mixed_precision and method == "full":
        dtype_name += " autocast, fp32 weights"
    label = (
        f"{method}, {fmt_params(shape.n_params)} params, {dtype_name}, {optimizer}, "
        f"batch {batch_size} x {seq_len} tokens{', checkpointing' if gradient_checkpointing else ''}"
    )
    return MemoryEstimate(
        weights=round(weights),
        gradients=trainable * trainable_bytes,
        optimizer=round(trainable * OPTIMIZER_BYTES[optimizer](trainable_bytes)),
        activations=acts["total"],
        label=label,
    )


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


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
    then reports every tensor allocation and free with its size; replaying them in time order
    gives the exact peak of live tensor bytes. Frees of tensors made before `start()` are not
    reported, which is why the result is relative to the start.
    """

    def __init__(self, device: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"measuring memory supports 'cuda' and 'cpu', not '{self.device}'.")
        self._prof, self._start = None, 0

    def start(self) -> PeakProbe:
        """Begin recording."""
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
        from torch.autograd import DeviceType

        with _quiet_stderr():
            self._prof.stop()
        events = sorted(
            (
                e
                for e in self._prof.profiler.kineto_results.events()
                if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
            ),
            key=lambda e: e.start_ns(),
        )
        self._prof = None
        live = peak = 0
        for event in events:  # nbytes is negative for a free
            live += event.nbytes()
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


def train_step_fn(
    config,
    method: str = "full",
    batch_size: int = 8,
    seq_len: int = 128,
    dtype=torch.float32,
    gradient_checkpointing: bool = False,
    lora_r: int = 8,
    lora_targets=("q_proj", "v_proj"),
    steps: int = 2,
    seed: int = 0,
) -> Callable[[], None]:
    """A function for `measure_peak`: build a random model from `config`, train `steps` AdamW steps.

    Two steps, because AdamW creates its state during the first `step()`: only the second
    forward and backward run with the optimizer state in memory, as every later step does.
    Gradients are set to None after each step (the default of `zero_grad`).
    """
    if method not in ("full", "lora"):
        raise ValueError(
            "train_step_fn builds 'full' or 'lora' models; for QLoRA load a 4-bit model."
        )
    from transformers import AutoModelForCausalLM

    tokens = torch.randint(
        0, config.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed)
    )

    def run() -> None:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(dtype)
        if gradient_checkpointing:
            # transformers 5 renamed gradient_checkpointing_enable; the old name warns until v6
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        if method == "lora":
            from peft import LoraConfig, get_peft_model

            targets = lora_targets if lora_targets == "all-linear" else list(lora_targets)
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora_r, lora_alpha=2 * lora_r, target_modules=targets, lora_dropout=0.0
                ),
            )
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(steps):
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return run


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float = 1e-4):
    """The optimizer `estimate` calls `name`: torch's AdamW or SGD, bitsandbytes' 8- or 32-bit AdamW."""
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
    predicts. The steps train on random tokens of exactly `seq_len` (no padding): measure a copy.
    Gradient checkpointing is measured if the model has it enabled (it works in train mode only).
    `loss="trl"` computes the loss as TRL's SFTTrainer does, with its fused LM head (this patches
    the model's forward: another reason to measure a copy).
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    tokens = tokens.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    kwargs = {}
    if loss == "trl":
        from trl.trainer.utils import add_fused_lm_head

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
        kwargs["fused_lm_head"] = True

    def run() -> None:
        opt = make_optimizer(optimizer, params)
        for _ in range(steps):  # two: AdamW makes its state in the first step() (see train_step_fn)
            model(input_ids=tokens, labels=tokens, **kwargs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    weights = model_bytes(model)
    step = measure_peak(run, device.type)
    return {"weights": weights, "step": step, "total": weights + step}


# ---------------------------------------------------------------------------------------------
# Will it fit?
# ---------------------------------------------------------------------------------------------

DEFAULT_OPTIMIZER = {"full": "adamw", "lora": "adamw", "qlora": "paged_adamw_8bit"}


@dataclass
class Fit:
    """The answer of `will_it_fit`."""

    fits: bool
    needed_gb: float
    available_gb: float
    headroom_gb: float  # negative when it does not fit
    estimate: MemoryEstimate

    def __str__(self) -> str:
        """One line: the verdict, what is needed, what is usable."""
        verdict = "fits" if self.fits else "does not fit"
        return (
            f"{verdict}: needs {self.needed_gb:.1f} GB of {self.available_gb:.1f} GB usable "
            f"(headroom {self.headroom_gb:+.1f} GB)"
        )


def will_it_fit(
    model,
    method: str = "qlora",
    gpu: str | float = "T4",
    batch_size: int = 1,
    seq_len: int = 512,
    gradient_checkpointing: bool = True,
    optimizer: str | None = None,
    dtype=torch.bfloat16,
    lora_r: int = 16,
    lora_targets: Iterable[str] = "all-linear",
    overhead_gb: float = 1.0,
    mixed_precision: bool = True,
    kbit_prepared: bool = True,
) -> Fit:
    """Does fine-tuning `model` with `method` fit on `gpu` (a name in GPUS or GB)?

    `overhead_gb` is kept free for what `estimate` does not see: the CUDA context (~0.5 GB),
    kernels' workspaces and allocator fragmentation. The defaults are a typical QLoRA run:
    all-linear adapters, r=16, checkpointing, paged 8-bit AdamW, the embeddings and head upcast to
    fp32 by `prepare_model_for_kbit_training` (`kbit_prepared`); full fine-tuning is counted as it
    runs on a GPU, in mixed precision (fp32 weights and AdamW, 16-bit activations: on a T4, fp16).
    """
    if isinstance(gpu, str):
        if gpu not in GPUS:
            raise KeyError(f"Unknown GPU '{gpu}'. Known: {', '.join(GPUS)}; or pass its GB.")
        capacity = GPUS[gpu]
    else:
        capacity = float(gpu)
    est = estimate(
        model,
        method,
        dtype,
        batch_size,
        seq_len,
        optimizer or DEFAULT_OPTIMIZER[method],
        gradient_checkpointing,
        lora_r,
        lora_targets,
        mixed_precision=mixed_precision,
        kbit_prepared=kbit_prepared,
    )
    available = capacity - overhead_gb
    needed = est.total / GB
    return Fit(needed <= available, needed, available, available - needed, est)


def fit_rows(
    models: Iterable = tuple(MODELS),
    methods: Iterable[str] = METHODS,
    gpu: str | float = "T4",
    **kwargs,
) -> list[dict]:
    """One row per model: its parameters and, per method, the GB needed and whether it fits."""
    rows = []
    for model in models:
        shape = as_shape(model)
        row = {
            "model": model if isinstance(model, str) else f"{shape.n_params / 1e9:.1f}B",
            "params": shape.n_params,
        }
        for method in methods:
            fit = will_it_fit(shape, method, gpu, **kwargs)
            row[method] = round(fit.needed_gb, 2)
            row[f"{method} fits"] = fit.fits
        rows.append(row)
    return rows


def fit_table(
    models: Iterable = tuple(MODELS),
    methods: Iterable[str] = METHODS,
    gpu: str | float = "T4",
    **kwargs,
) -> str:
    """A plain-text table: memory needed per model and method, marked ✓ where it fits on `gpu`."""
    methods = tuple(methods)
    lines = [
        f"GPU: {gpu}  ({', '.join(f'{k}={v}' for k, v in kwargs.items()) or 'defaults'})",
        f"{'model':<16}{'params':>8}" + "".join(f"{m:>14}" for m in methods),
    ]
    for row in fit_rows(models, methods, gpu, **kwargs):
        cells = [f"{row[m]:>9.1f} GB {'✓' if row[f'{m} fits'] else '✗'}" for m in methods]
        lines.append(f"{row['model']:<16}{row['params'] / 1e9:>7.2f}B" + "".join(cells))
    return "\n".join(lines)


def fit_breakdown(
    model="Llama-3.2-1B",
    gpu: str | float = "T4",
    batch_size: int = 1,
    seq_len: int = 512,
    gradient_checkpointing: bool = True,
) -> dict[str, dict]:
    """Per method: the GB of each part of `will_it_fit`'s estimate, the peak, what is usable, and a verdict."""
    table = {}
    for method in METHODS:
        fit = will_it_fit(model, method, gpu, batch_size, seq_len, gradient_checkpointing)
        est = fit.estimate
        table[method] = {
            "weights GB": est.weights / GB,
            "gradients GB": est.gradients / GB,
            "optimizer state GB": est.optimizer / GB,
            "activations GB": est.activations / GB,
            "peak GB": fit.needed_gb,
            "usable GB": fit.available_gb,
            "fits": "✓" if fit.fits else "✗",
        }
    return table


# The control's defaults, which the static table beside it shows.
FIT_DEFAULTS = {
    "model": "Llama-3.2-1B",
    "batch_size": 1,
    "seq_len": 512,
    "gradient_checkpointing": True,
}


def fit_widget(gpu: str = "T4", static: bool = True):
    """An ipywidgets control (model, method, batch, length, GPU); prints `fit_table` without it.

    `static=True` first displays the default selection as a table (every method): a widget shows
    only in a live kernel, and that table is what GitHub and Colab's preview render in its place.
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

        frame = pd.DataFrame(fit_breakdown(gpu=gpu, **FIT_DEFAULTS))
        d = FIT_DEFAULTS
        frame.columns.name = (
            f"{d['model']} on {gpu}, batch {d['batch_size']} x {d['seq_len']} tokens"
            f"{', checkpointing' if d['gradient_checkpointing'] else ''}"
        )
        display(frame.map(lambda v: round(v, 2) if isinstance(v, float) else v))

    controls = {
        "model": widgets.Dropdown(
            options=list(MODELS), value=FIT_DEFAULTS["model"], description="model"
        ),
        "method": widgets.ToggleButtons(options=list(METHODS), value="qlora", description="method"),
        "batch_size": widgets.IntSlider(
            value=FIT_DEFAULTS["batch_size"], min=1, max=32, description="batch"
        ),
        "seq_len": widgets.Dropdown(
            options=[256, 512, 1024, 2048, 4096],
            value=FIT_DEFAULTS["seq_len"],
            description="tokens",
        ),
        "gpu": widgets.Dropdown(options=list(GPUS), value=gpu, description="GPU"),
        "gradient_checkpointing": widgets.Checkbox(
            value=FIT_DEFAULTS["gradient_checkpointing"], description="checkpointing"
        ),
    }

    def show(**kw):
        fit = will_it_fit(**kw)
        print(fit.estimate.table(), "\n", fit, sep="")

    class FitControl(widgets.VBox):
        # what a page without a live kernel prints in the widget's place (else "VBox(children=...")
        def __repr__(self) -> str:
            return (
                "[will-it-fit control: live in Jupyter and Colab; the table above is its default]"
            )

    out = widgets.interactive_output(show, controls)
    return FitControl([*controls.values(), out])
