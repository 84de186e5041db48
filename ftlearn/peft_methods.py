"""The PEFT family (07_peft_methods): one config function for LoRA, DoRA, (IA)³, prompt and prefix tuning.

Each config is the peft call a learner would write in their own project; `peft_config` only fills in
defaults that suit a Llama-shaped causal LM (the course's tiny models, SmolLM2, Qwen2.5). peft has no
bottleneck adapter, so `BottleneckAdapter` and `inject_bottleneck` write one by hand (Houlsby /
Pfeiffer); `expected_trainable` gives every method's parameter count from its formula (LoRA's and
DoRA's from `ftlearn.shapes.lora_params`, the course's one LoRA count) and `prefix_kept` what a
prefix keeps for inference. `sweep_rates` gives each method its own learning rates to try;
`merged_copy` and `compare_merged` measure whether an adapter folds into the weights;
`method_widget` is the notebook's control (a method and its knob -> what it trains).
"""

from __future__ import annotations

import copy

import torch
from peft import IA3Config, PeftConfig, PrefixTuningConfig, PromptTuningConfig
from torch import nn

from ftlearn.compat import make_config, remove_trl_forward_patch
from ftlearn.lora import lora_config
from ftlearn.profiles import Profile
from ftlearn.shapes import LLAMA_LINEAR, as_shape, lora_params

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
# Prompt tuning's text initialisation: the task's own instruction (the system prompt of the atlas's
# chats); 8 tokens of the course tokenizer ("Answer", " ", "with", ...), so no virtual token is
# cut off or repeated. peft truncates a longer text and repeats a shorter one.
PROMPT_INIT_TEXT = "Answer with the fact."


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
        # With a tokenizer: the embeddings of a text describing the task (Lester et al.'s best
        # init below 10B parameters). Without one: embeddings of random vocabulary tokens, never
        # peft's RANDOM N(0, 1) draws, which are far larger than a trained embedding.
        defaults = {"num_virtual_tokens": VIRTUAL_TOKENS, "prompt_tuning_init": "SAMPLE_VOCAB"}
        if overrides.get("tokenizer_name_or_path"):
            defaults |= {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": PROMPT_INIT_TEXT}
        return make_config(PromptTuningConfig, task_type="CAUSAL_LM", **{**defaults, **overrides})
    if key == "prefix_tuning":
        # Li & Liang's reparametrisation: the prefix comes out of an MLP (width encoder_hidden_size,
        # peft's default the model's width) while training, which they found far more stable than
        # training the keys and values directly; only the MLP's output is kept for inference.
        defaults = {"num_virtual_tokens": VIRTUAL_TOKENS, "prefix_projection": True}
        return make_config(PrefixTuningConfig, task_type="CAUSAL_LM", **{**defaults, **overrides})
    raise ValueError(f"Unknown PEFT method {method!r}. Valid methods: {', '.join(METHODS)}.")


# Learning rate of each method as a multiple of the profile's LoRA rate. Methods that train fewer
# values, each steering a whole token or channel, want larger steps: peft's own examples use 3e-2
# for prompt tuning and 1e-2 for prefix tuning and IA3, where LoRA gets 2e-4 to 1e-3.
# These are the centres of each method's own sweep (SWEEP_FACTORS): 07 picks the best of the three
# on the validation split, so a centre that was off by 3x costs nothing but a wasted run.
LR_SCALE: dict[str, float] = {
    "lora": 1.0,
    "dora": 1.0,
    # one scale per channel, starting at 1: on tiny (20 steps, validation) 3e-2 reached 1% exact
    # match, 9e-2 14%, 2.7e-1 29%, still rising at the top, so its sweep is centred there
    "ia3": 90.0,
    "prompt_tuning": 30.0,  # on tiny (20 steps, text init): 3e-2 2%, 9e-2 4%, 2.7e-1 3%
    # through its projection MLP, ordinary weights: a LoRA-like rate. On tiny (20 steps,
    # validation) 3e-3 reached 15% exact match, 9e-3 4%, 2.7e-2 0%: best at the bottom, so the
    # sweep is centred there
    "prefix_tuning": 1.0,
    "bottleneck": 3.0,  # measured on tiny (20 steps): 3e-3 reached 14% exact match, 1e-2 60%, 3e-2 53%
}
SWEEP_FACTORS = (1 / 3, 1.0, 3.0)  # a sweep of 3 rates: the centre / 3, the centre, x 3

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
    """`peft_config(method)` with the profile's LoRA rank, alpha and targets, and its tokenizer."""
    key = method.lower().replace("-", "_")
    if key in ("lora", "dora"):
        overrides = {"profile": profile, **overrides}
    if key == "prompt_tuning":  # the text initialisation reads the base model's tokenizer
        from ftlearn.models import resolve

        overrides = {"tokenizer_name_or_path": resolve(profile, "base"), **overrides}
    return peft_config(key, **overrides)


def learning_rate(method: str, profile: Profile) -> float:
    """The learning rate for `method` on `profile`: its LoRA rate times the method's LR_SCALE."""
    key = method.lower().replace("-", "_")
    if key not in LR_SCALE:
        raise ValueError(f"Unknown PEFT method {method!r}. Valid methods: {', '.join(LR_SCALE)}.")
    return profile.lora_learning_rate * LR_SCALE[key]


def sweep_rates(method: str, profile: Profile, n: int = len(SWEEP_FACTORS)) -> list[float]:
    """`n` learning rates for `method`'s own sweep: 1 is `learning_rate`, 3 adds / 3 and x 3 (SWEEP_FACTORS)."""
    if n not in (1, len(SWEEP_FACTORS)):
        raise ValueError(f"A sweep of {n} rates: 07 sweeps 1 or {len(SWEEP_FACTORS)} (plan.py).")
    centre = learning_rate(method, profile)
    factors = (1.0,) if n == 1 else SWEEP_FACTORS
    return [float(f"{centre * f:.3g}") for f in factors]  # 0.009, not 0.009000000000000001


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
    """Trainable parameters of `method` on a Llama-shaped model (anything `shapes.as_shape` takes).

    Options: `r` and `targets` (LoRA, DoRA), `targets` and `feedforward` ((IA)³), `num_virtual_tokens`,
    `prefix_projection` and
    `encoder_hidden_size` (prefix tuning, as peft names them), `size` and `places` (bottleneck).
    """
    key = method.lower().replace("-", "_")
    shape = as_shape(config)
    layers, d = shape.layers, shape.hidden
    n = options.get("num_virtual_tokens", VIRTUAL_TOKENS)
    if key in ("lora", "dora"):  # A is r x in, B is out x r; DoRA adds a magnitude per output
        return lora_params(shape, options["r"], options.get("targets", "all-linear"), key == "dora")
    if key == "ia3":  # a scale per output channel, or per input channel of a feedforward layer
        targets = options.get("targets", IA3_TARGETS)
        feedforward = options.get("feedforward", [t for t in IA3_FEEDFORWARD if t in targets])
        sizes = shape.linear_shapes()  # (in, out): with the defaults 2 x kv + down_proj's input
        return layers * sum(sizes[t][0] if t in feedforward else sizes[t][1] for t in targets)
    if key == "prompt_tuning":
        return n * d
    if key == "prefix_tuning":
        kept = prefix_kept(shape, n)  # a key and a value vector per virtual token per layer
        if not options.get("prefix_projection", True):
            return kept
        # peft's PrefixEncoder works at the key/value width kv (its token_dim under grouped-query
        # attention): n embeddings of width kv -> Linear(kv, h) -> tanh -> Linear(h, kept / n),
        # h = encoder_hidden_size, by default kv too
        kv, out = as_shape(config).kv_dim, kept // n
        h = options.get("encoder_hidden_size") or kv
        return n * kv + (kv * h + h) + (h * out + out)
    if key == "bottleneck":
        places = len(options.get("places", ("mlp",)))
        m = options["size"]
        return layers * places * (2 * d * m + m + d)
    raise ValueError(f"Unknown method {method!r}. Valid: {', '.join(METHODS)}, bottleneck.")


def prefix_kept(config, num_virtual_tokens: int = VIRTUAL_TOKENS) -> int:
    """Values a trained prefix keeps for inference: n x layers x (key + value width), MLP or not."""
    shape = as_shape(config)
    return num_virtual_tokens * shape.layers * 2 * shape.kv_dim


def plot_methods(table, title: str = ""):
    """Three panels from a methods table (columns `trainable`, `exact_match`, `peak_mib`, `step_ms`)."""
    import matplotlib.pyplot as plt

    from ftlearn.experiments import plot_accuracy_vs_params

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    plot_accuracy_vs_params(table, "exact match vs trainable parameters", ax=axes[0])
    panels = {"peak_mib": ("peak memory (MiB)", "MiB"), "step_ms": ("step time (ms)", "ms")}
    for ax, (column, (name, unit)) in zip(axes[1:], panels.items(), strict=True):
        ax.barh(table.index.astype(str), table[column])
        ax.invert_yaxis()
        ax.set(xlabel=unit, title=name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Serving: can the adapter be folded into the weights? (07_peft_methods, section 5)
# ---------------------------------------------------------------------------------------------


def merged_copy(model: nn.Module) -> tuple[nn.Module | None, str]:
    """`merge_and_unload()` on a deep copy of `model`: (merged model, "merged"), or (None, peft's refusal)."""
    try:  # a copy: merging replaces the adapter layers in place, and the notebook still needs them
        twin = copy.deepcopy(model)
        remove_trl_forward_patch(twin)  # else the copy's forward runs the original (ftlearn.compat)
        merged = twin.merge_and_unload()
    except (AttributeError, ValueError, NotImplementedError) as err:
        return None, f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return merged, "merged"


@torch.no_grad()
def compare_merged(adapter: nn.Module, merged: nn.Module, input_ids, attention_mask) -> dict:
    """How far a merged model's logits are from its adapter model's, and what is left of the adapter."""
    adapter.eval(), merged.eval()  # inference: LoRA's dropout off, or the two could never agree
    a = adapter(input_ids=input_ids, attention_mask=attention_mask).logits
    b = merged(input_ids=input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()  # padding positions are never read
    markers = {m for ms in PARAM_MARKERS.values() for m in ms if m.startswith(("lora", "ia3"))}
    return {
        "max_abs_logit_diff": (a - b).abs()[real].max().item(),
        "same_next_token": (a.argmax(-1) == b.argmax(-1))[real].float().mean().item(),
        "parameters": sum(p.numel() for p in merged.parameters()),
        "adapter_tensors_left": sum(
            any(m in n for m in markers) for n, _ in merged.named_parameters()
        ),
    }


# ---------------------------------------------------------------------------------------------
# The control: a method and its main knob -> what it trains (07_peft_methods, section 4)
# ---------------------------------------------------------------------------------------------

# Each method's main knob: (label, the values the control offers, the option of expected_trainable)
KNOBS: dict[str, tuple[str, tuple, str]] = {
    "lora": ("rank r", (1, 2, 4, 8, 16, 32, 64), "r"),
    "dora": ("rank r", (1, 2, 4, 8, 16, 32, 64), "r"),
    "ia3": ("targets", ("k, v, down (paper)", "all linear"), "targets"),
    "prompt_tuning": ("virtual tokens", (1, 2, 4, 8, 16, 32, 64, 128), "num_virtual_tokens"),
    "prefix_tuning": ("virtual tokens", (1, 2, 4, 8, 16, 32, 64, 128), "num_virtual_tokens"),
    "bottleneck": ("width m", (4, 8, 16, 32, 64, 128), "size"),
}
IA3_PRESETS = {"k, v, down (paper)": IA3_TARGETS, "all linear": list(LLAMA_LINEAR)}


def knob_row(method: str, model, value, measured: dict | None = None) -> dict:
    """What `method` trains and keeps at its knob's `value` on `model` (anything as_shape takes)."""
    label, _, option = KNOBS[method]
    options = {option: IA3_PRESETS[value] if method == "ia3" else value}
    if method in ("lora", "dora"):
        options["targets"] = "all-linear"  # the course's LoRA targets on every profile
    trainable = expected_trainable(method, model, **options)
    kept = prefix_kept(model, value) if method == "prefix_tuning" else trainable
    row = {
        "knob": f"{label} = {value}",
        "trainable": trainable,
        "% of the model": round(100 * trainable / as_shape(model).n_params, 3),
        "kept for inference": kept,
        "adapter MiB (fp32)": round(kept * 4 / 2**20, 3),
    }
    if measured and method in measured:  # what the notebook measured, at the knob it trained
        trained_value, score = measured[method]
        row["measured here"] = score if value == trained_value else "not trained here"
    return row


def method_widget(model, name: str, measured: dict | None = None, static: bool = True):
    """An ipywidgets control (model, method, knob) printing `knob_row`; a table of every method first.

    `model` is the notebook's model (or its config), `name` its label; `measured` maps a method to
    (the knob value it was trained at, its measured score as text). `static=True` displays every
    method at its trained knob value, here and on Llama-3.1-8B, as a table: a widget shows only in
    a live kernel, and that table is what GitHub and Colab's preview render in its place.
    """
    import pandas as pd

    defaults = {m: (measured or {}).get(m, (KNOBS[m][1][0],))[0] for m in KNOBS}
    models = {name: model, **{k: k for k in ("SmolLM2-135M", "Llama-3.2-1B", "Llama-3.1-8B")}}
    frame = pd.DataFrame({m: knob_row(m, model, defaults[m], measured) for m in KNOBS}).T
    frame.insert(
        3, "on Llama-3.1-8B", [knob_row(m, "Llama-3.1-8B", defaults[m])["trainable"] for m in KNOBS]
    )
    frame.columns.name = f"on {name}, at the knobs trained here"
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:
        print("ipywidgets is not installed: here is the static table instead.\n")
        print(frame.to_string())
        return None
    if static:
        display(frame)
    method = widgets.ToggleButtons(options=list(KNOBS), value="lora", description="method")
    knob = widgets.SelectionSlider(
        options=KNOBS["lora"][1], value=defaults["lora"], description="knob"
    )
    chosen = widgets.Dropdown(options=list(models), value=name, description="model")

    def retune(change) -> None:  # each method has its own knob and values
        knob.options, knob.value = KNOBS[change["new"]][1], defaults[change["new"]]
        knob.description = KNOBS[change["new"]][0]

    method.observe(retune, names="value")

    def show(method: str, value, model: str) -> None:
        if (
            value not in KNOBS[method][1]
        ):  # mid-switch: the slider still holds the last method's value
            return
        row = knob_row(method, models[model], value, measured if model == name else None)
        print(
            "\n".join(
                f"{k:>20}: {v:,}" if isinstance(v, int) else f"{k:>20}: {v}" for k, v in row.items()
            )
        )

    class MethodControl(widgets.VBox):
        # what a page without a live kernel prints in the widget's place (else "VBox(children=...")
        def __repr__(self) -> str:
            return (
                "[PEFT method control: live in Jupyter and Colab; the table above is its default]"
            )

    out = widgets.interactive_output(show, {"method": method, "value": knob, "model": chosen})
    return MethodControl([chosen, method, knob, out])


def plot_sweep(sweep, title: str = ""):
    """Validation exact match against learning rate, a line per method (`sweep`: rows method, columns rate)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for method, row in sweep.iterrows():
        rates = row.dropna().sort_index()
        ax.plot(rates.index, rates.values, "o-", label=str(method))
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="exact match (validation)")
    ax.set(title=title, ylim=(-0.05, 1.05))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
