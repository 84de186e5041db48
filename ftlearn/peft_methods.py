"""The PEFT family (07_peft_methods): one config function for LoRA, DoRA, (IA)³, prompt and prefix tuning.

Each config is the peft call a learner would write in their own project; `peft_config` only fills in
defaults that suit a Llama-shaped causal LM (the course's tiny models, SmolLM2, Qwen2.5). peft has no
bottleneck adapter, so `BottleneckAdapter` and `inject_bottleneck` write one by hand (Houlsby /
Pfeiffer); `expected_trainable` gives every method's parameter count from its formula.
"""

from __future__ import annotations

import torch
from peft import IA3Config, PeftConfig, PrefixTuningConfig, PromptTuningConfig
from torch import nn
from transformers import AutoModelForCausalLM

from ftlearn.compat import make_config
from ftlearn.lora import lora_config
from ftlearn.profiles import Profile

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
        # Start from the embeddings of random vocabulary tokens, not peft's N(0, 1) draws, which are
        # far larger than a trained embedding: Lester et al. found vocabulary init much better
        # than random on all but the largest models.
        defaults = {"num_virtual_tokens": VIRTUAL_TOKENS, "prompt_tuning_init": "SAMPLE_VOCAB"}
        return make_config(PromptTuningConfig, task_type="CAUSAL_LM", **{**defaults, **overrides})
    if key == "prefix_tuning":
        # prefix_projection=False: train the key/value vectors directly, no reparametrising MLP
        defaults = {"num_virtual_tokens": VIRTUAL_TOKENS, "prefix_projection": False}
        return make_config(PrefixTuningConfig, task_type="CAUSAL_LM", **{**defaults, **overrides})
    raise ValueError(f"Unknown PEFT method {method!r}. Valid methods: {', '.join(METHODS)}.")


# Learning rate of each method as a multiple of the profile's LoRA rate. Methods that train fewer
# values, each steering a whole token or channel, want larger steps: peft's own examples use 3e-2
# for prompt tuning and 1e-2 for prefix tuning and IA3, where LoRA gets 2e-4 to 1e-3.
LR_SCALE: dict[str, float] = {
    "lora": 1.0,
    "dora": 1.0,
    "ia3": 10.0,
    "prompt_tuning": 10.0,
    "prefix_tuning": 30.0,  # measured on tiny (15 steps): 3e-2 reached 2% exact match, 1e-1 16%
    "bottleneck": 3.0,  # measured on tiny (20 steps): 3e-3 reached 14% exact match, 1e-2 60%, 3e-2 53%
}

# The names peft gives each method's trainable tensors: training must touch nothing else.
PARAM_MARKERS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_A", "lora_B"),
    "dora": ("lora_A", "lora_B", "lora_magnitude_vector"),
    "ia3": ("ia3_l",),
    "prompt_tuning": ("prompt_encoder",),
    "prefix_tuning": ("prompt_encoder",),
    "bottleneck": (
        ".down.",
        ".up.",
    ),  # BottleneckAdapter's layers (the MLP's are down_proj, up_proj)
}


def config_for(method: str, profile: Profile, **overrides) -> PeftConfig:
    """`peft_config(method)`, with LoRA's and DoRA's rank, alpha and targets from the profile."""
    key = method.lower().replace("-", "_")
    if key in ("lora", "dora"):
        overrides = {"profile": profile, **overrides}
    return peft_config(key, **overrides)


def learning_rate(method: str, profile: Profile) -> float:
    """The learning rate for `method` on `profile`: its LoRA rate times the method's LR_SCALE."""
    key = method.lower().replace("-", "_")
    if key not in LR_SCALE:
        raise ValueError(f"Unknown PEFT method {method!r}. Valid methods: {', '.join(LR_SCALE)}.")
    return profile.lora_learning_rate * LR_SCALE[key]


def foreign_trainable(model, method: str) -> list[str]:
    """Trainable parameters of a peft model that do not belong to `method`'s adapter (should be [])."""
    markers = PARAM_MARKERS[method.lower().replace("-", "_")]
    return [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and not any(m in n for m in markers)
    ]


# ---------------------------------------------------------------------------------------------
# Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020), by hand: peft has none
# ---------------------------------------------------------------------------------------------


class BottleneckAdapter(nn.Module):
    """A module's output h plus up(act(down(h))): width d -> m -> d, up = 0 so it starts as identity."""

    def __init__(self, wrapped: nn.Module, hidden: int, size: int):
        super().__init__()
        self.wrapped = wrapped
        # fp32 whatever the frozen model's dtype, as peft keeps LoRA's A and B
        kw = {"dtype": torch.float32, "device": next(wrapped.parameters()).device}
        self.down = nn.Linear(hidden, size, **kw)  # d*m + m values
        self.up = nn.Linear(size, hidden, **kw)  # m*d + d values
        nn.init.zeros_(self.up.weight)  # as LoRA's B = 0: step 0 is exactly the frozen model
        nn.init.zeros_(self.up.bias)
        self.act = nn.GELU()

    def forward(self, *args, **kwargs):
        """Run the wrapped module, then add the adapter's correction to its (first) output."""
        out = self.wrapped(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out  # attention returns (output, weights)
        h = h + self.up(self.act(self.down(h.to(self.up.weight.dtype)))).to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h


def inject_bottleneck(model: nn.Module, size: int, places: tuple[str, ...] = ("mlp",)) -> list[str]:
    """Freeze `model` and wrap each decoder layer's `places` (Pfeiffer: "mlp"; Houlsby: also "self_attn")."""
    model.requires_grad_(False)
    hidden = model.config.hidden_size
    wrapped = []
    for name, module in list(model.named_modules()):
        for place in places:
            child = getattr(module, place, None)
            if child is not None and hasattr(module, "input_layernorm"):  # a decoder layer
                setattr(module, place, BottleneckAdapter(child, hidden, size))
                wrapped.append(f"{name}.{place}")
    if not wrapped:
        raise ValueError(
            f"No decoder layer with {places} in {type(model).__name__}: bottleneck adapters "
            "here are written for Llama-shaped models (layers with input_layernorm, self_attn, mlp)."
        )
    return wrapped


def expected_trainable(method: str, config, **options) -> int:
    """Trainable parameters of `method` on a Llama-shaped `config`, from the formulas in METHODS."""
    key = method.lower().replace("-", "_")
    layers, d = config.num_hidden_layers, config.hidden_size
    ffn = config.intermediate_size
    kv = config.num_key_value_heads * getattr(config, "head_dim", d // config.num_attention_heads)
    n = options.get("num_virtual_tokens", VIRTUAL_TOKENS)
    if key in ("lora", "dora"):
        from ftlearn.lora import _targeted, resolve_targets

        with torch.device("meta"):  # shapes only: no memory is allocated
            model = AutoModelForCausalLM.from_config(config)
        linears = _targeted(model, resolve_targets(options.get("targets", "all-linear"))).values()
        r, dora = options["r"], key == "dora"
        # A is r x in, B is out x r; DoRA adds one magnitude per output feature
        return sum(r * (m.in_features + m.out_features) + dora * m.out_features for m in linears)
    if key == "ia3":
        return layers * (2 * kv + ffn)  # k and v outputs, down_proj's input
    if key == "prompt_tuning":
        return n * d
    if key == "prefix_tuning":
        return n * layers * 2 * kv  # a key and a value vector per virtual token per layer
    if key == "bottleneck":
        places = len(options.get("places", ("mlp",)))
        m = options["size"]
        return layers * places * (2 * d * m + m + d)
    raise ValueError(f"Unknown method {method!r}. Valid: {', '.join(METHODS)}, bottleneck.")


def plot_methods(table, title: str = ""):
    """Three panels from a methods table: exact match vs trainable parameters, peak memory, step time."""
    import matplotlib.pyplot as plt

    from ftlearn.lora import plot_accuracy_vs_params

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    plot_accuracy_vs_params(table, "exact match vs trainable parameters", ax=axes[0])
    for ax, column in zip(axes[1:], ("peak MB", "step ms"), strict=True):
        ax.barh(table.index.astype(str), table[column])
        ax.invert_yaxis()
        ax.set(xlabel=column, title=column.replace("MB", "memory (MB)").replace("ms", "time (ms)"))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
