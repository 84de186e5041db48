"""The precision policy, in one place: what a model is loaded, trained and computed in, per method.

`policy(profile, method)` is read by `models.load` (the load dtype), `training.settings_for` (the
Trainer's `fp16`/`bf16` flags), `ftlearn plan` and the notebooks' memory estimates (bytes per
parameter), so that all of them count the same way:

    device           full fine-tuning                    LoRA / PEFT                QLoRA
    CPU              fp32 everywhere                     fp32 base, fp32 adapters   NF4, fp32 compute
    fp16 GPU (T4)    fp32 weights, fp16 autocast,        fp16 frozen base,          NF4, fp16 compute,
                     loss scaling (`fp16=True`)          fp32 adapters, fp16=True   fp32 adapters
    bf16 GPU         mixed bf16: fp32 weights,           bf16 frozen base,          NF4, bf16 compute,
                     bf16 autocast (`bf16=True`)         fp32 adapters, bf16=True   fp32 adapters

Whatever trains is fp32 on every device. fp16 cannot hold it: the Trainer's gradient scaler refuses
fp16 gradients ("Attempting to unscale FP16 gradients"), and an update of lr x gradient, ~1e-5 of a
weight, is below the gap between neighbouring 16-bit numbers (05_quantization, section 1), so it
rounds away. On a bf16 GPU the course therefore trains *mixed* bf16, not pure bf16: pure bf16 halves
full fine-tuning's 16 bytes a parameter to 8, but with torch's AdamW the small updates round away
unless the optimizer adds Kahan summation or stochastic rounding. What stays 16-bit is what does
not train: LoRA's and QLoRA's frozen base, and the activations under autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # profiles imports this module lazily (describe); no import cycle at run time
    from ftlearn.profiles import Profile

METHODS = ("full", "lora", "qlora")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Precision:
    """The dtypes of one training method on one profile, and what they cost per parameter."""

    method: str  # "full", "lora" or "qlora"
    mode: str  # "fp32", "mixed fp16" or "mixed bf16": what the setup cell prints
    load_dtype: str  # `from_pretrained(dtype=...)`: every weight, before anything trains
    trainable_dtype: str  # the parameters that receive gradients: always float32
    compute_dtype: str  # autocast's dtype (activations), and QLoRA's 4-bit compute dtype
    bf16: bool  # TrainingArguments(bf16=...)
    fp16: bool  # TrainingArguments(fp16=...): autocast plus the gradient scaler

    def flags(self) -> dict[str, bool]:
        """The `bf16`/`fp16` arguments of TrainingArguments (SFTConfig)."""
        return {"bf16": self.bf16, "fp16": self.fp16}

    def bytes_per_param(self) -> dict[str, float]:
        """Bytes per trainable parameter (weights, gradients, AdamW, master copy) and per frozen one.

        `master` is 0: the trainable weights are themselves the fp32 master copy (the Trainer's
        mixed precision keeps no second copy; autocast's short-lived 16-bit casts are not counted).
        `frozen` is a frozen parameter that is not quantized (LoRA's base; QLoRA's embeddings, head
        and norms as loaded: 4-bit linear layers take 4.127 bits instead, 05_quantization).
        """
        trainable = DTYPE_BYTES[self.trainable_dtype]
        return {
            "weights": trainable,
            "gradients": trainable,
            "optimizer": 2 * trainable,  # AdamW's two moments, in the parameter's dtype
            "master": 0,
            "frozen": DTYPE_BYTES[self.load_dtype] if self.method != "full" else 0,
        }

    def trained_bytes(self) -> float:
        """Bytes per trainable parameter before activations: weights + gradients + AdamW + master."""
        b = self.bytes_per_param()
        return b["weights"] + b["gradients"] + b["optimizer"] + b["master"]

    def estimate_args(self) -> dict:
        """The `dtype` and `mixed_precision` arguments of TrainingSetup fields of `ftlearn.estimator.estimate` for this policy."""
        return {
            "dtype": self.compute_dtype,
            "mixed_precision": self.method == "full" and self.compute_dtype != self.trainable_dtype,
        }

    def __str__(self) -> str:
        """One line: the mode, what is stored in which dtype, and the autocast flags."""
        short = SHORT
        trained = short[self.trainable_dtype]
        if self.method == "full":
            held = f"{trained} weights, gradients and AdamW"
        elif self.method == "lora":
            held = f"{short[self.load_dtype]} frozen base, {trained} adapters"
        else:
            held = f"NF4 frozen base ({short[self.compute_dtype]} compute), {trained} adapters"
        if self.fp16:
            compute = "fp16 autocast with loss scaling (fp16=True)"
        elif self.bf16:
            compute = "bf16 autocast (bf16=True)"
        else:
            compute = "no autocast"
        return f"{self.mode}: {held}; {compute}"


def policy(profile: Profile, method: str = "full") -> Precision:
    """The precision of training with `method` ("full", "lora", "qlora") on `profile` as chosen.

    The profile's `dtype` is its 16-bit dtype on a CUDA GPU (`profiles.choose` picks bf16 where the
    GPU has it, fp16 on a T4) and float32 elsewhere: this turns it into the dtypes of each part.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {METHODS}.")
    half = profile.dtype if profile.device == "cuda" else "float32"
    if half not in DTYPE_BYTES:
        raise ValueError(
            f"{profile.name}: dtype {profile.dtype!r} is not one of {list(DTYPE_BYTES)}."
        )
    mode = "fp32" if half == "float32" else f"mixed {SHORT[half]}"
    return Precision(
        method=method,
        mode=mode,
        # full fine-tuning trains every weight, so every weight is loaded in fp32; LoRA and QLoRA
        # load the frozen base in 16 bits (QLoRA: what is not quantized), the adapters come in fp32
        load_dtype="float32" if method == "full" else half,
        trainable_dtype="float32",
        compute_dtype=half,
        bf16=half == "bfloat16",
        fp16=half == "float16",
    )


def summary(profile: Profile) -> str:
    """What each method trains in on `profile`, a line each: for the setup cell (`describe`)."""
    return "\n".join(f"{m:>5}: {policy(profile, m)}" for m in METHODS)
