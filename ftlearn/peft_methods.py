"""The PEFT family (07_peft_methods): one config function for LoRA, DoRA, (IA)³, prompt and prefix tuning.

Each config is the peft call a learner would write in their own project; `peft_config` only fills in
defaults that suit a Llama-shaped causal LM (the course's tiny models, SmolLM2, Qwen2.5).
"""

from __future__ import annotations

from peft import IA3Config, PeftConfig, PrefixTuningConfig, PromptTuningConfig

from ftlearn.compat import make_config
from ftlearn.lora import lora_config

# What each method trains, and when it is worth it (d: hidden width, kv: key/value width, n: tokens).
METHODS: dict[str, str] = {
    "lora": (
        "low-rank A, B beside each targeted linear, r*(in+out) values each; the default: strong, "
        "cheap, and it merges into W (no inference cost)"
    ),
    "dora": (
        "LoRA on the direction of W plus a trained magnitude (out values a layer); can beat LoRA at "
        "low r, but each step is slower (peft: 'a bigger overhead than pure LoRA'); mergeable"
    ),
    "ia3": (
        "one learned scale per channel of k, v and the MLP's down_proj input (2*kv + mlp values a "
        "block); the fewest parameters of the weight-based methods, for small data or many adapters"
    ),
    "prompt_tuning": (
        "n virtual token embeddings prepended to the input (n*d values in all); tiny and swappable "
        "per task, but it matches full fine-tuning only near 10B parameters (Lester et al., 2021)"
    ),
    "prefix_tuning": (
        "n learned keys and values at every layer (n*2*kv values a layer); more reach than prompt "
        "tuning, adds n positions to every attention, cannot be merged"
    ),
}

# Checked against the installed peft by tests/test_peft_methods.py, so it cannot silently go stale.
BOTTLENECK_ADAPTERS_NOTE = (
    "peft 0.21 has no bottleneck adapter in the Houlsby/Pfeiffer sense (a down-projection, a "
    "non-linearity and an up-projection inserted after attention and the MLP): no member of "
    "peft.PeftType is one. The nearest relatives it ships are ADAPTION_PROMPT (LLaMA-Adapter: "
    "learned prompts with zero-initialised gating, for llama, mistral and gpt2) and SHADOW "
    "(ShadowPEFT: a parallel network whose injection goes through a low-rank bottleneck). Houlsby "
    "and Pfeiffer adapters live in AdapterHub's separate `adapters` library, which the course does "
    "not use: the LoRA paper found LoRA on par or better, without the adapters' extra latency."
)

# (IA)³ as in its paper, and peft's own default for Llama: scale the keys, the values and the input
# of the MLP's last projection ("feedforward" modules are scaled on their input, not their output).
IA3_TARGETS = ["k_proj", "v_proj", "down_proj"]
IA3_FEEDFORWARD = ["down_proj"]
# Prompt tuning trains 8 x hidden values: 512 for a 64-wide model, 4,608 for SmolLM2-135M (576).
VIRTUAL_TOKENS = 8


def peft_config(method: str, **overrides) -> PeftConfig:
    """The peft config of `method` (see METHODS) for a causal LM; keyword arguments override defaults."""
    key = method.lower().replace("-", "_")
    if key == "lora":
        return lora_config(**overrides)
    if key == "dora":
        return lora_config(use_dora=True, **overrides)
    if key == "ia3":
        targets = overrides.pop("target_modules", IA3_TARGETS)
        # peft requires feedforward_modules to be a subset of target_modules
        feedforward = overrides.pop(
            "feedforward_modules", [m for m in IA3_FEEDFORWARD if m in targets]
        )
        return make_config(
            IA3Config,
            task_type="CAUSAL_LM",
            target_modules=targets,
            feedforward_modules=feedforward,
            **overrides,
        )
    if key == "prompt_tuning":
        defaults = {"num_virtual_tokens": VIRTUAL_TOKENS, "prompt_tuning_init": "RANDOM"}
        return make_config(PromptTuningConfig, task_type="CAUSAL_LM", **{**defaults, **overrides})
    if key == "prefix_tuning":
        # prefix_projection=False: train the key/value vectors directly, no reparametrising MLP
        defaults = {"num_virtual_tokens": VIRTUAL_TOKENS, "prefix_projection": False}
        return make_config(PrefixTuningConfig, task_type="CAUSAL_LM", **{**defaults, **overrides})
    raise ValueError(f"Unknown PEFT method {method!r}. Valid methods: {', '.join(METHODS)}.")
