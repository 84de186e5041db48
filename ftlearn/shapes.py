"""Model shapes: the numbers of a Llama-style config that decide parameter counts and memory.

A catalogue of real models' shapes (`MODELS`, copied from their config.json), `as_shape` to read a
shape from a config, a model, a catalogue name or a parameter count, `llama_config` to build a
random model of any catalogued shape (memory depends on shapes, not on weight values), and the one
LoRA parameter count of the course (`lora_params`), which 04_lora, 06_qlora's estimator and
07_peft_methods all use. Nothing here allocates a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# The linear layers of a Llama decoder layer, by the names transformers gives them (and peft's
# `target_modules` matches): attention's four projections, then SwiGLU's three.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = LLAMA_LINEAR[:4]
TARGET_PRESETS = {"all-linear": LLAMA_LINEAR, "attention": ATTENTION}


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
    def embedding_params(self) -> int:
        """Token embeddings and LM head: one matrix when they are tied."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        """Two RMSNorm weights per layer and the final norm."""
        return (2 * self.layers + 1) * self.hidden

    @property
    def n_params(self) -> int:
        """All parameters: linear layers, norms, embeddings and head."""
        return self.linear_params + self.norm_params + self.embedding_params

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
    """A ModelShape from a shape, a transformers config or model, a name in MODELS, or billions of params.

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
        per_layer = (base.n_params - base.embedding_params) / base.layers
        extra = (target - base.n_params) / per_layer
        return ModelShape(**{**base.__dict__, "layers": max(1, round(base.layers + extra))})
    return ModelShape.from_config(getattr(model, "config", model))  # a model (peft's too) or config


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


def resolve_targets(targets: str | Iterable[str]) -> list[str]:
    """A list of module names from a list or a preset: "all-linear" or "attention" (Llama names)."""
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise ValueError(
                f"targets={targets!r}: use a list of module names or one of {list(TARGET_PRESETS)}."
            )
        return list(TARGET_PRESETS[targets])
    return list(targets)


def lora_params(
    model, r: int, targets: str | Iterable[str] = "all-linear", dora: bool = False
) -> int:
    """Parameters LoRA trains on `model` (anything `as_shape` takes): r * (in + out) per adapted linear.

    A is r x in, B is out x r, for every targeted linear layer of every decoder layer. `dora=True`
    adds DoRA's trained magnitude, one value per output feature of each adapted layer.
    """
    names = resolve_targets(targets)
    unknown = sorted(set(names) - set(LLAMA_LINEAR))
    if unknown:
        raise ValueError(
            f"Unknown LoRA targets {unknown}: use names from {LLAMA_LINEAR}, 'all-linear' or "
            "'attention'."
        )
    shapes = as_shape(model).linear_shapes()
    per_layer = sum(r * (shapes[t][0] + shapes[t][1]) + dora * shapes[t][1] for t in set(names))
    return as_shape(model).layers * per_layer


def fmt_params(n: int) -> str:
    """'8.03B' or '135.0M'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
