"""Comparing fine-tuning methods (04_lora, 07_peft_methods): train, score, tabulate.

`train_and_score` is notebook 03's `make_trainer(...).train()` followed by `evaluate_exact_match`,
returning one row of a comparison table; `plot_accuracy_vs_params` draws such a table;
`adapter_matrix` scores every adapter of a multi-adapter model on every task. Every key of the
rows they return is snake_case, memory in MiB (`_mib`).
"""

from __future__ import annotations

import torch
from torch import nn

from ftlearn.compat import remove_trl_forward_patch
from ftlearn.estimator import MiB
from ftlearn.lora import trainable_report
from ftlearn.measure import adamw_state_bytes


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
    remove_trl_forward_patch(trained)  # a copy of it (merging, peaks) must not run this model
    scores = evaluate_exact_match(
        trained, tokenizer, test, max_new_tokens=max_new_tokens, batch_size=64
    )
    report = trainable_report(trained)
    lora = peft_config if hasattr(peft_config, "lora_alpha") else None  # LoRA's knobs, if LoRA
    return {
        "model": trained,
        "exact_match": scores["exact_match"],
        "trainable": report["trainable"],
        "trainable_percent": report["percent"],
        # wall time over optimizer steps: data collation and logging included, as a learner sees it
        "step_ms": 1000 * result.metrics["train_runtime"] / max(result.global_step, 1),
        "optimizer_state_mib": adamw_state_bytes(trainer.optimizer) / MiB,
        "train_loss": result.training_loss,
        "history": trainer.state.log_history,
        "predictions": scores["predictions"],
        "learning_rate": settings.learning_rate,
        "seed": settings.seed,
        "lora_r": lora.r if lora else None,
        "lora_alpha": lora.lora_alpha if lora else None,
        "use_rslora": lora.use_rslora if lora else None,
    }


def plot_accuracy_vs_params(table, title: str = "", ax=None):
    """`exact_match` against `trainable` parameters (log scale), one labelled point per row of `table`."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(table["trainable"], table["exact_match"], "o")
    for i, (label, row) in enumerate(table.iterrows()):
        ax.annotate(  # labels alternate above and below, so that close points stay readable
            str(label), (row["trainable"], row["exact_match"]), xytext=(4, 5 if i % 2 == 0 else -11),
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
def answer_budget(tokenizer, rows: list[dict], margin: int = 4) -> int:
    """New tokens enough for the longest reference answer of `rows`, its end of turn and `margin`."""
    longest = max(len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) for r in rows)
    return longest + 1 + margin


def adapter_matrix(
    peft_model, tokenizer, rows_by_task: dict[str, list[dict]], max_new_tokens: int | None = None
):
    """Exact match of every adapter of `peft_model` (rows) on every task (columns), and the base's.

    Each task gets `max_new_tokens`, or by default `answer_budget` of its own rows: a yes/no
    question needs a few tokens where a rewrite needs dozens, and an answer that runs past its
    reference's length is wrong either way.
    """
    import pandas as pd

    from ftlearn.evaluation import evaluate_exact_match

    budget = {task: max_new_tokens or answer_budget(tokenizer, rows) for task, rows in rows_by_task.items()}

    def score() -> dict[str, float]:
        return {
            task: evaluate_exact_match(
                peft_model, tokenizer, rows, max_new_tokens=budget[task], batch_size=64
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


def spread_table(groups: dict, keys: tuple[str, ...] = ("exact_match", "train_loss")):
    """Per group of seeded runs (label -> list of `train_and_score` rows): mean, sd, min, max of `keys`.

    With 3 seeds the standard deviation is itself rough; min and max show every seed's result, so
    a claim "a beats b" can be read as "every seed of a beats every seed of b".
    """
    import numpy as np
    import pandas as pd

    table = {}
    for label, runs in groups.items():
        if not runs:
            raise ValueError(f"group {label!r} has no runs: train at least one seed.")
        row = {"seeds": len(runs)}
        for key in keys:
            values = np.array([run[key] for run in runs], dtype=float)
            row |= {f"{key}_mean": values.mean(), f"{key}_sd": values.std(ddof=1) if len(values) > 1
                    else float("nan"), f"{key}_min": values.min(), f"{key}_max": values.max()}  # fmt: skip
        table[label] = row
    return pd.DataFrame(table).T.astype({"seeds": int})


def plot_spread(table, x: str, by: str, keys: tuple[str, ...] = ("exact_match", "train_loss")):
    """One panel per key: its mean against `x`, a line per value of `by`, bars from min to max."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, rows in table.groupby(by, sort=False):
            rows = rows.sort_values(x)
            mean = rows[f"{key}_mean"].astype(float)
            bars = [
                mean - rows[f"{key}_min"].astype(float),
                rows[f"{key}_max"].astype(float) - mean,
            ]
            ax.errorbar(rows[x], mean, yerr=bars, marker="o", capsize=3, label=str(name))
        ax.set(
            xscale="log",
            xlabel=x,
            ylabel=key.replace("_", " "),
            title=f"{key.replace('_', ' ')}: mean, min-max",
        )
        ax.set_xticks(sorted(table[x].unique()), [str(v) for v in sorted(table[x].unique())])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def seed_hits(runs: list[dict], references: list[str]):
    """Per question, the share of the seeded `runs` that answered it exactly (for a paired bootstrap)."""
    import numpy as np

    from ftlearn.evaluation import hits

    return np.mean([hits(run["predictions"], references) for run in runs], axis=0)


def compare_seeded(a: list[dict], b: list[dict], references: list[str]) -> dict:
    """a against b, two groups of seeded runs on the same questions: the two spreads side by side.

    `exact_match`: the seed-averaged difference with its 95% bootstrap interval over the questions
    (ftlearn.stats.paired); `*_apart`: +1 if every seed of a is above every seed of b, -1 if below,
    0 if the seeds overlap. A claim holds where both spreads agree.
    """
    from ftlearn.stats import paired

    def apart(key: str) -> int:
        low_a, high_a = min(r[key] for r in a), max(r[key] for r in a)
        low_b, high_b = min(r[key] for r in b), max(r[key] for r in b)
        return 1 if low_a > high_b else -1 if high_a < low_b else 0

    return {
        "exact_match": paired(seed_hits(a, references), seed_hits(b, references)),
        "exact_match_apart": apart("exact_match"),
        "train_loss_apart": apart("train_loss"),
    }


@torch.no_grad()
def forward_ms(
    models: dict[str, nn.Module], input_ids, attention_mask, reps: int = 30, warmup: int = 3
):
    """Milliseconds per forward pass of each model on one batch, timed side by side (07_peft_methods).

    The models take turns within every repetition (in reverse order every other one), so a burst of
    load on a shared machine slows them alike; `vs_first` is the median over repetitions of each
    model's time over the first model's in the same repetition, the comparison that noise moves
    least, and `vs_first_q25` / `vs_first_q75` its interquartile range.
    """
    import time

    import numpy as np
    import pandas as pd

    names = list(models)
    for model in models.values():
        model.eval()
    times = {name: [] for name in names}
    for rep in range(warmup + reps):
        for name in names if rep % 2 == 0 else reversed(names):
            start = time.perf_counter()
            models[name](input_ids=input_ids, attention_mask=attention_mask)
            if rep >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    ms = {name: np.array(t) for name, t in times.items()}
    return pd.DataFrame(
        {
            name: {
                "median_ms": float(np.median(t)),
                "q25_ms": float(np.quantile(t, 0.25)),
                "q75_ms": float(np.quantile(t, 0.75)),
                "vs_first": float(np.median(t / ms[names[0]])),
                "vs_first_q25": float(np.quantile(t / ms[names[0]], 0.25)),
                "vs_first_q75": float(np.quantile(t / ms[names[0]], 0.75)),
            }
            for name, t in ms.items()
        }
    ).T


def seed_table(runs: dict[tuple[str, int], dict], references: list[str]):
    """One row per method from its runs over seeds (`runs[method, seed]`, train_and_score's dicts).

    Exact match is the mean over seeds, with its lowest and highest seed beside it; loss and step
    time are means; the rest is seed 0's. Also returns each method's per-question hits averaged
    over seeds, for a paired bootstrap over the questions (`ftlearn.stats.paired`).
    """
    import numpy as np
    import pandas as pd

    from ftlearn.evaluation import hits

    rows, per_question = {}, {}
    for method in dict.fromkeys(m for m, _ in runs):
        seeds = [run for (m, _), run in sorted(runs.items()) if m == method]
        scores = [run["exact_match"] for run in seeds]
        per_question[method] = np.mean([hits(r["predictions"], references) for r in seeds], axis=0)
        rows[method] = {
            "trainable": seeds[0]["trainable"],
            "trainable_percent": seeds[0]["trainable_percent"],
            "exact_match": float(np.mean(scores)),
            "exact_match_low": min(scores),
            "exact_match_high": max(scores),
            "seeds": len(seeds),
            "train_loss": float(np.mean([r["train_loss"] for r in seeds])),
            "step_ms": float(np.mean([r["step_ms"] for r in seeds])),
            "optimizer_state_mib": seeds[0]["optimizer_state_mib"],
        }
    return pd.DataFrame.from_dict(rows, orient="index"), per_question


def fine_tune(profile, run, tokenizer, rows: list[dict], seed: int = 0, learning_rate: float | None = None):
    """One run of `ftlearn.plan`'s catalogue (`plan.run(profile, key)`) on `rows` for one epoch, recorded
    in runs/results.jsonl (09).

    LoRA, QLoRA (on the NF4 base) or full fine-tuning as the run says, at the profile's rate for that method unless
    `learning_rate` is given; the record holds its settings, data hash, versions and seed.
    """
    from ftlearn import tracking
    from ftlearn.models import load
    from ftlearn.paths import run_dir
    from ftlearn.training import make_trainer

    key = run.key
    adapter = run.method in ("lora", "qlora")
    default = profile.lora_learning_rate if adapter else profile.learning_rate
    folder = run_dir(f"{key.split('/')[0]}/{run.name}-{seed}", fresh=True)
    settings = run.settings(profile, str(folder), learning_rate=learning_rate or default, seed=seed, logging_steps=5, epochs=1.0)
    peft = run.lora_config(profile) if adapter else None
    if run.method == "qlora":  # the NF4 base of 06, prepared as peft prepares it (norms in fp32, input grads on)
        from peft import prepare_model_for_kbit_training

        from ftlearn.quantization import bnb_config

        model = load(profile, run.model, quantization=bnb_config("nf4"))[0]
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=run.gradient_checkpointing)
    else:
        model = load(profile, run.model, method=run.method)[0]
    trainer = make_trainer(model, tokenizer, rows, settings, peft_config=peft)
    trainer.train()
    remove_trl_forward_patch(trainer.model)  # a copy of it must not run this model (07)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    name = f"{key.split('_')[0]} {run.name} seed {seed}" + (f" lr {learning_rate:g}" if learning_rate else "")
    tracking.record(name, {"train loss": losses}, settings, rows, seed, profile.name)
    return trainer.model
