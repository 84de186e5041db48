"""LoRA from scratch (04_lora): the layer, its injection, merging, and the parameter accounting.

The course trains with peft (`lora_config` below + `peft.get_peft_model`); the from-scratch layer is
kept apart from that path so a learner can read all of LoRA in one screen. tests/test_lora.py proves
that, given the same A and B, our layer and peft's produce the same outputs. The parameter count
from a model's shape is `ftlearn.shapes.lora_params`; `lora_cost` and `lora_widget` turn it into
what a learner weighs (parameters, scaling, MiB); 04 and 07's train-and-score runs live in
`ftlearn.experiments`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import LoraConfig
from torch import nn

from ftlearn.compat import make_config
from ftlearn.estimator import MiB
from ftlearn.profiles import Profile
from ftlearn.shapes import MODELS, as_shape, lora_params, resolve_targets


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = W x + (alpha / r) * B A x."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)  # W stays as pre-trained: only A and B learn
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r  # the LoRA paper's choice: a new r then needs no new learning rate
        # A and B in fp32 whatever W's dtype, as peft does (autocast_adapter_dtype): fp16 mixed
        # precision cannot train fp16 parameters, and tiny updates to A and B round away in 16 bits.
        kw = {"dtype": torch.float32, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kw))
        # B = 0 makes B @ A = 0: at step 0 the model is exactly the pre-trained one.
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as in peft
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base output plus the low-rank path; A first, so no out x in matrix is ever built."""
        update = self.dropout(x.to(self.lora_A.dtype)) @ self.lora_A.T @ self.lora_B.T
        return self.base(x) + (update * self.scaling).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update as a full matrix, scaling * B @ A (out x in): what merging adds to W."""
        return self.lora_B @ self.lora_A * self.scaling


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]  # "model.layers.0.self_attn.q_proj" -> "q_proj", as peft matches


def _targeted(model: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The nn.Linear modules whose last name is in `targets`; an error naming them all if none is."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = {n: m for n, m in linears.items() if _short(n) in targets}
    if not chosen:
        raise ValueError(
            f"No nn.Linear named {sorted(targets)} in {type(model).__name__}. "
            f"Its linear layers are named: {sorted({_short(n) for n in linears})}."
        )
    return chosen


def inject_lora(
    model: nn.Module, target_modules: str | list[str], r: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Freeze `model` and wrap each targeted nn.Linear in a LoRALinear; returns the replaced names."""
    chosen = list(_targeted(model, resolve_targets(target_modules)))
    model.requires_grad_(False)  # everything frozen first: the new A and B are then all that trains
    for name in chosen:  # replace after listing: never change a module tree while walking it
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, LoRALinear(getattr(owner, child), r, alpha, dropout))
    return chosen


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold W + scaling * B @ A into plain nn.Linear layers, in place: no extra cost at inference."""
    # Any layer with lora_A, lora_B, scaling and base (ours, or 04_lora's own version of it).
    # The merged layers stay frozen, as inject_lora left them: merging is for serving, not training.
    for name, module in _lora_layers(model).items():
        delta = module.scaling * module.lora_B @ module.lora_A  # out x r @ r x in = out x in
        module.base.weight += delta.to(module.base.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.base)
    return model


@torch.no_grad()
def copy_to_peft(model: nn.Module, peft_model: nn.Module, adapter: str = "default") -> list[str]:
    """Copy A and B from every LoRALinear of `model` into the peft LoRA layer of the same name."""
    theirs = dict(peft_model.get_base_model().named_modules())
    copied = []
    for name, module in _lora_layers(model).items():
        if name not in theirs or not hasattr(theirs[name], "lora_A"):
            raise ValueError(
                f"The peft model has no LoRA layer named {name!r}: target the same modules."
            )
        theirs[name].lora_A[adapter].weight.copy_(module.lora_A)
        theirs[name].lora_B[adapter].weight.copy_(module.lora_B)
        copied.append(name)
    return copied


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding lora_A and lora_B parameters: our LoRALinear, or a learner's own version of it."""
    found = {
        n: m
        for n, m in model.named_modules()
        if isinstance(getattr(m, "lora_A", None), nn.Parameter)
        and isinstance(getattr(m, "lora_B", None), nn.Parameter)
    }
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no LoRA layer (a module with lora_A and lora_B "
            "parameters): inject them first (inject_lora)."
        )
    return found


def count_trainable(model: nn.Module) -> int:
    """Parameters that will receive gradients (parameters() counts tied weights once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peft_trainable(peft_model) -> int:
    """Trainable parameters as peft itself reports them (`print_trainable_parameters` uses it)."""
    trainable, _total = peft_model.get_nb_trainable_parameters()
    return trainable


def trainable_report(model: nn.Module) -> dict:
    """Trainable and total parameters and the trainable share in percent."""
    trainable = count_trainable(model)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "percent": 100 * trainable / total}


def lora_config(
    profile: Profile | None = None,
    *,
    r: int | None = None,
    alpha: float | None = None,
    dropout: float = 0.05,
    targets: str | list[str] | None = None,
    attention_only: bool = False,
    **overrides,
) -> LoraConfig:
    """A peft LoraConfig for a causal LM: r=8, alpha=16, all linear layers, unless told otherwise."""
    if attention_only and targets is not None:
        raise ValueError("Pass either targets=... or attention_only=True, not both.")
    if attention_only:
        targets = "attention"
    elif targets is None:
        targets = profile.lora_targets if profile else "all-linear"
    return make_config(  # make_config: a misspelt override fails with the closest valid names
        LoraConfig,
        task_type="CAUSAL_LM",
        r=r if r is not None else (profile.lora_r if profile else 8),
        # peft's own default is lora_alpha=8 = r; the common rule of thumb is alpha = 2r
        lora_alpha=alpha if alpha is not None else (profile.lora_alpha if profile else 16),
        lora_dropout=dropout,
        target_modules=resolve_targets(targets),
        **overrides,
    )


def _folder_bytes(path: str | Path) -> int:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder: save it first with .save_pretrained({str(path)!r})."
        )
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def adapter_size_mib(path: str | Path) -> float:
    """Size on disk of an adapter saved by `peft_model.save_pretrained(path)`, in MiB."""
    if not (Path(path) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path} holds no adapter_config.json: is it a saved peft adapter?")
    return _folder_bytes(path) / MiB


def model_size_mib(path: str | Path) -> float:
    """Size on disk of a model folder saved by `model.save_pretrained(path)`, in MiB."""
    return _folder_bytes(path) / MiB


@torch.no_grad()
def max_abs_logit_diff(model_a: nn.Module, model_b: nn.Module, input_ids: torch.Tensor) -> float:
    """The largest |logit_a - logit_b| over a batch, both models in eval mode (dropout off)."""
    modes = [(m, m.training) for m in (model_a, model_b)]
    try:
        diff = (
            model_a.eval()(input_ids=input_ids).logits - model_b.eval()(input_ids=input_ids).logits
        )
    finally:
        for m, was_training in modes:  # hand the models back as they came
            m.train(was_training)
    return diff.abs().max().item()


@torch.no_grad()
def weight_deltas(
    before: dict[str, torch.Tensor], model: nn.Module, targets: str | list[str]
) -> dict[str, torch.Tensor]:
    """W_after - W_before for each targeted linear layer's weight: what fine-tuning changed."""
    chosen = _targeted(model, resolve_targets(targets))
    # `before` may be kept on the CPU, so that a GPU holds no second copy of the model: compare there
    return {
        n: m.weight.detach().to(b.device).float() - b.float()
        for n, m in chosen.items()
        for b in [before[f"{n}.weight"]]
    }


def energy_rank(singular_values: torch.Tensor, share: float = 0.9) -> int:
    """The fewest singular directions that hold `share` of a matrix's energy (sum of s squared)."""
    energy = singular_values.double().pow(2).cumsum(0)
    return int((energy < share * energy[-1]).sum().item()) + 1


def update_ranks(
    before: dict[str, torch.Tensor],
    model: nn.Module,
    targets: str | list[str] = "all-linear",
    shares: tuple[float, ...] = (0.5, 0.9),
):
    """Per targeted weight: how many singular directions hold each share of what training changed."""
    import pandas as pd

    rows = []
    for name, delta in weight_deltas(before, model, targets).items():
        s = torch.linalg.svdvals(delta)
        rows.append(
            {
                "layer": name.removeprefix("model."),
                "module": _short(name),
                "shape": tuple(delta.shape),
                "full rank": min(delta.shape),
                **{f"rank holding {share:.0%}": energy_rank(s, share) for share in shares},
            }
        )
    return pd.DataFrame(rows).set_index("layer")


# ---------------------------------------------------------------------------------------------
# What a rank costs: 04_lora's control (rank, alpha, targets -> parameters, scaling, MiB)
# ---------------------------------------------------------------------------------------------

TARGET_CHOICES = {  # the three choices a learner meets in papers and model cards
    "q_proj, v_proj (LoRA paper)": ("q_proj", "v_proj"),
    "attention (q, k, v, o)": "attention",
    "all linear layers (QLoRA)": "all-linear",
}
# Bytes per trainable parameter: an fp32 adapter file holds 4; training holds its fp32 weight,
# gradient and AdamW's two moments, 4 + 4 + 8 (as notebook 06's estimator counts).
FILE_BYTES, TRAIN_BYTES = 4, 16


def lora_cost(
    model, r: int, alpha: float, targets: str | list[str] = "all-linear", rslora: bool = False
) -> dict:
    """LoRA on `model` (anything `as_shape` takes): trainable parameters, scaling, memory in MiB."""
    if r < 1:
        raise ValueError(f"r={r}: the rank of B @ A is at least 1.")
    shape = as_shape(model)
    n = lora_params(shape, r, targets)
    return {
        "trainable": n,
        "trainable_percent": 100 * n / (shape.n_params + n),  # of all, as peft reports it
        "scaling": alpha / (math.sqrt(r) if rslora else r),
        "adapter_mib": FILE_BYTES * n / MiB,  # the saved adapter (peft saves fp32 A and B)
        "training_mib": TRAIN_BYTES * n / MiB,  # adapter weights + gradients + AdamW state
    }


def lora_cost_table(models: dict, ranks=(8, 16), targets=TARGET_CHOICES):
    """`lora_cost` for every model x targets x rank: the control's static rendering."""
    import pandas as pd

    rows = {
        (name, label, r): lora_cost(shape, r, 2 * r, chosen)
        for name, shape in models.items()
        for label, chosen in targets.items()
        for r in ranks
    }
    frame = pd.DataFrame(rows).T.drop(columns="scaling")
    frame.index.names = ["model", "targets", "r"]
    return frame.astype({"trainable": int}).round(2)


def lora_widget(models: dict | None = None, static: bool = True):
    """An ipywidgets control (model, rank, alpha, targets, rsLoRA) printing `lora_cost`.

    `static=True` first displays `lora_cost_table(models)`: a widget shows only in a live kernel,
    and that table is what GitHub and Colab's preview render in its place.
    """
    models = models or dict(MODELS)
    try:
        import ipywidgets as widgets
    except ImportError:
        print("ipywidgets is not installed: here is the static table instead.\n")
        print(lora_cost_table(models))
        return None
    if static:
        from IPython.display import display

        display(lora_cost_table(models))
    ranks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    controls = {
        "model": widgets.Dropdown(options=list(models), description="model"),
        "r": widgets.SelectionSlider(options=ranks, value=8, description="rank r"),
        "alpha": widgets.SelectionSlider(options=ranks, value=16, description="alpha"),
        "targets": widgets.Dropdown(
            options=list(TARGET_CHOICES), value=list(TARGET_CHOICES)[-1], description="targets"
        ),
        "rslora": widgets.Checkbox(value=False, description="rsLoRA: alpha / sqrt(r)"),
    }

    def show(model, r, alpha, targets, rslora):
        c = lora_cost(models[model], r, alpha, TARGET_CHOICES[targets], rslora)
        print(
            f"trainable {c['trainable']:,} ({c['trainable_percent']:.2f}% of all parameters); "
            f"scaling {c['scaling']:.3g} (alpha changes no parameter: it scales B A x)\n"
            f"adapter file {c['adapter_mib']:.2f} MiB (fp32); to train it, "
            f"{c['training_mib']:.2f} MiB (weights + gradients + AdamW)"
        )

    class LoRAControl(widgets.VBox):
        # what a page without a live kernel prints in the widget's place (else "VBox(children=...")
        def __repr__(self) -> str:
            return "[LoRA cost control: live in Jupyter and Colab; the table above is its default]"

    out = widgets.interactive_output(show, controls)
    return LoRAControl([*controls.values(), out])
