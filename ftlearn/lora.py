"""LoRA from scratch (04_lora): the layer, its injection, merging, and the parameter accounting.

The course trains with peft (`lora_config` below + `peft.get_peft_model`); the from-scratch layer is
kept apart from that path so a learner can read all of LoRA in one screen. tests/test_lora.py proves
that, given the same A and B, our layer and peft's produce the same outputs. The last section holds
what 04 and 07 measure with: `train_and_score`, `update_ranks`, `plot_accuracy_vs_params` and
`adapter_matrix`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import LoraConfig
from torch import nn

from ftlearn.compat import make_config
from ftlearn.profiles import LLAMA_LINEAR, Profile

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
TARGET_PRESETS = {"all-linear": LLAMA_LINEAR, "attention": ATTENTION}


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


def resolve_targets(targets: str | list[str] | tuple[str, ...]) -> list[str]:
    """A list of module names from a list or a preset: "all-linear" or "attention" (Llama names)."""
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise ValueError(
                f"targets={targets!r}: use a list of module names or one of {list(TARGET_PRESETS)}."
            )
        return list(TARGET_PRESETS[targets])
    return list(targets)


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
    # The merged layers stay frozen, as inject_lora left them: merging is for serving, not training.
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.base.weight += module.delta_weight().to(module.base.weight.dtype)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.base)
    return model


@torch.no_grad()
def copy_lora_weights(ours: LoRALinear, theirs: nn.Module, adapter: str = "default") -> None:
    """Give our layer the A and B of one peft LoRA layer (same shapes: A is r x in, B is out x r)."""
    ours.lora_A.copy_(theirs.lora_A[adapter].weight)
    ours.lora_B.copy_(theirs.lora_B[adapter].weight)


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


def copy_from_peft(model: nn.Module, peft_model: nn.Module, adapter: str = "default") -> list[str]:
    """Copy A and B from every peft LoRA layer into our LoRALinear of the same name; returns the names."""
    # get_base_model() is the wrapped transformers model, so its module names are the same as ours
    theirs = dict(peft_model.get_base_model().named_modules())
    copied = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            if name not in theirs or not hasattr(theirs[name], "lora_A"):
                raise ValueError(
                    f"The peft model has no LoRA layer named {name!r}: target the same modules."
                )
            copy_lora_weights(module, theirs[name], adapter)
            copied.append(name)
    return copied


def lora_param_count_formula(model_or_config, target_modules: str | list[str], r: int) -> int:
    """Sum over the targeted linears of r * (in + out): A is r x in, B is out x r."""
    model = model_or_config
    if not isinstance(model, nn.Module):
        # a config: build the model on the meta device, which allocates no memory at all
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_or_config)
    chosen = _targeted(model, resolve_targets(target_modules))
    return sum(r * (m.in_features + m.out_features) for m in chosen.values())


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


def _folder_mb(path: str | Path) -> float:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder: save it first with .save_pretrained({str(path)!r})."
        )
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6  # MB = 10^6 bytes


def adapter_size_mb(path: str | Path) -> float:
    """Size on disk of an adapter saved by `peft_model.save_pretrained(path)`, in MB."""
    if not (Path(path) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{path} holds no adapter_config.json: is it a saved peft adapter?")
    return _folder_mb(path)


def model_size_mb(path: str | Path) -> float:
    """Size on disk of a model folder saved by `model.save_pretrained(path)`, in MB."""
    return _folder_mb(path)


# Bytes of optimizer state per trainable parameter.
STATE_BYTES = {
    "adamw": 8,  # two fp32 moments (m and v), 4 bytes each
    "sgd_momentum": 4,  # one fp32 velocity
    "sgd": 0,  # plain SGD keeps no state
}


def optimizer_state_bytes(model: nn.Module, optimizer: str = "adamw") -> int:
    """Memory the optimizer's state will take: bytes per trainable parameter x trainable parameters."""
    if optimizer not in STATE_BYTES:
        raise ValueError(f"optimizer={optimizer!r}: choose one of {list(STATE_BYTES)}.")
    return STATE_BYTES[optimizer] * count_trainable(model)


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


def adamw_state_bytes(optimizer) -> int:
    """Bytes an AdamW optimizer really holds in its two moments (exp_avg, exp_avg_sq), measured."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the Trainer's one
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for key, t in state.items()
        if key in ("exp_avg", "exp_avg_sq")
    )


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


# ---------------------------------------------------------------------------------------------
# Measuring runs for the notebooks' comparison tables (04_lora, 07_peft_methods)
# ---------------------------------------------------------------------------------------------


def train_and_score(
    model: nn.Module,
    tokenizer,
    train: list[dict],
    test: list[dict],
    settings,
    peft_config=None,
    max_new_tokens: int = 16,
) -> dict:
    """Train with the course's SFTTrainer, then measure: exact match, trainable share, step time."""
    from ftlearn.evaluation import evaluate_exact_match
    from ftlearn.training import make_trainer

    trainer = make_trainer(model, tokenizer, train, settings, peft_config=peft_config)
    result = trainer.train()
    trained = trainer.model  # the PeftModel when peft_config was given, else `model` itself
    scores = evaluate_exact_match(
        trained, tokenizer, test, max_new_tokens=max_new_tokens, batch_size=64
    )
    report = trainable_report(trained)
    return {
        "model": trained,
        "exact match": scores["exact_match"],
        "trainable": report["trainable"],
        "trainable %": report["percent"],
        # wall time over optimizer steps: data collation and logging included, as a learner sees it
        "step ms": 1000 * result.metrics["train_runtime"] / max(result.global_step, 1),
        "optimizer state MB": adamw_state_bytes(trainer.optimizer) / 1e6,
        "train loss": result.training_loss,
        "history": trainer.state.log_history,
        "predictions": scores["predictions"],
    }


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


def plot_accuracy_vs_params(table, title: str = "", ax=None):
    """Exact match against trainable parameters (log scale), one labelled point per row of `table`."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(table["trainable"], table["exact match"], "o")
    for i, (label, row) in enumerate(table.iterrows()):
        ax.annotate(  # labels alternate above and below, so that close points stay readable
            str(label), (row["trainable"], row["exact match"]), xytext=(4, 5 if i % 2 == 0 else -11),
            textcoords="offset points", fontsize=8,
        )  # fmt: skip
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel="exact match")
    ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^4, 3x10^4... labels would overlap
    ax.margins(x=0.2)
    ax.set(title=title, ylim=(-0.12, 1.1))
    ax.grid(alpha=0.3)
    ax.figure.tight_layout()
    return ax.figure


@torch.no_grad()
def adapter_matrix(
    peft_model, tokenizer, rows_by_task: dict[str, list[dict]], max_new_tokens: int = 16
):
    """Exact match of every adapter of `peft_model` (rows) on every task (columns), and the base's."""
    import pandas as pd

    from ftlearn.evaluation import evaluate_exact_match

    def score() -> dict[str, float]:
        return {
            task: evaluate_exact_match(
                peft_model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=64
            )["exact_match"]
            for task, rows in rows_by_task.items()
        }

    table = {}
    for name in list(peft_model.peft_config):
        peft_model.set_adapter(name)  # a switch of pointers: no weight is copied or reloaded
        table[f"adapter {name}"] = score()
    with peft_model.disable_adapter():  # the frozen base, as it was before any training
        table["no adapter (base)"] = score()
    return pd.DataFrame(table).T
