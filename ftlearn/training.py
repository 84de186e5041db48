"""Supervised fine-tuning: a thin layer over TRL's SFTTrainer with the course's defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from ftlearn.compat import make_config, undo_trl_adapter_cast
from ftlearn.precision import policy
from ftlearn.tracking import report_to

try:  # the live plot is a TrainerCallback; transformers is always there, IPython only in Jupyter
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object


@dataclass
class SFTSettings:
    """The knobs a learner turns. Everything else is SFTConfig's default."""

    output_dir: str = "runs/sft"
    learning_rate: float = 1e-3
    epochs: float = 2.0
    max_steps: int = -1  # -1: run `epochs`; otherwise stop after this many optimizer steps
    batch_size: int = 32
    grad_accum: int = 1  # effective batch = batch_size * grad_accum
    max_length: int = 160
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    eval_steps: int | None = None  # evaluate on the validation split every N steps
    logging_steps: int = 10
    save_steps: int | None = None  # keep checkpoints (for resuming) every N steps
    seed: int = 0
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    group_by_length: bool = False  # batches of similar lengths: far less padding (02_datasets)
    answer_only_loss: bool = True  # loss on the answer tokens only (02_datasets shows why)
    extra: dict = field(default_factory=dict)  # any other SFTConfig argument, passed through

    def __str__(self) -> str:
        """The settings, one per line, with output_dir relative to the repository when inside it."""
        from ftlearn.paths import REPO_ROOT

        values = asdict(self)
        out = Path(self.output_dir).resolve()
        if out.is_relative_to(REPO_ROOT):
            values["output_dir"] = str(out.relative_to(REPO_ROOT))
        return "\n".join(f"{k:24} {v}" for k, v in values.items())


def settings_for(profile, output_dir: str, method: str = "full", **overrides) -> SFTSettings:
    """SFTSettings sized by a profile, with the bf16/fp16 flags of `method` (`precision.policy`)."""
    values = dict(
        output_dir=output_dir,
        learning_rate=profile.learning_rate,
        epochs=profile.sft_epochs,
        max_steps=profile.max_steps,
        batch_size=profile.batch_size,
        max_length=profile.max_length,
        **policy(profile, method).flags(),
    )
    return SFTSettings(**(values | overrides))


def sft_config(settings: SFTSettings):
    """The TRL `SFTConfig` for these settings (renamed arguments absorbed by ftlearn.compat)."""
    from trl import SFTConfig

    s = settings
    return make_config(
        SFTConfig,
        output_dir=s.output_dir,
        learning_rate=s.learning_rate,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        max_length=s.max_length,
        warmup_steps=s.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=s.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=s.logging_steps,
        eval_strategy="steps" if s.eval_steps else "no",
        eval_steps=s.eval_steps,
        save_strategy="steps" if s.save_steps else "no",
        save_steps=s.save_steps or 500,
        seed=s.seed,
        data_seed=s.seed,
        bf16=s.bf16,
        fp16=s.fp16,
        gradient_checkpointing=s.gradient_checkpointing,
        # Rows become prompt/completion pairs (see to_dataset), and TRL puts the loss on the
        # completion only: this works with any chat template, marked-up for training or not.
        completion_only_loss=s.answer_only_loss,
        packing=False,
        report_to=report_to(),  # "none" unless FTLEARN_TRACKING names a tracker (ftlearn.tracking)
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        **({"train_sampling_strategy": "group_by_length"} if s.group_by_length else {}),
        **s.extra,
    )


def to_dataset(rows: list[dict] | Dataset) -> Dataset:
    """Chat rows as conversational prompt/completion pairs: the last assistant turn is the completion."""
    pairs = []
    for i, row in enumerate(rows):
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(
                f"row {i} ({row.get('id', 'no id')}): the last message must be the "
                "assistant's answer; validate the data first (ftlearn.data.validate)."
            )
        if messages[-1].get("weight") == 0:  # OpenAI's format: context, not to be learned
            raise ValueError(
                f"row {i} ({row.get('id', 'no id')}): the last assistant turn has weight 0 (no "
                "loss), but it would be the completion, which is trained on. End the row with the "
                "answer to learn (weight 1), or load it with ftlearn.data.load_chat, which cuts "
                "the turns after the last weight-1 answer."
            )
        pairs.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return Dataset.from_list(pairs)


_PREPARED: dict = {}  # (rows, tokenizer, preparation settings) -> the Dataset TRL prepared from them


def _prepared_key(rows, tokenizer, config) -> str | None:
    """What TRL's preparation of `rows` depends on, hashed; None for a Dataset (not cached)."""
    import hashlib
    import json

    if not isinstance(rows, list):
        return None
    settings = (config.max_length, config.completion_only_loss, config.assistant_only_loss,
                config.packing, config.truncation_mode, config.dataset_text_field)  # fmt: skip
    text = json.dumps([rows, tokenizer.chat_template, tokenizer.name_or_path, len(tokenizer),
                       repr(settings)], sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def make_trainer(
    model,
    tokenizer,
    train,
    settings: SFTSettings,
    validation=None,
    callbacks=None,
    peft_config=None,
    print_logs: bool = False,
):
    """An SFTTrainer for `model` on chat rows `train` (and `validation`), ready to `.train()`.

    `print_logs=True` prints every log line (loss, learning rate) as transformers does by default.
    """
    from transformers import PrinterCallback
    from trl import SFTTrainer

    Path(settings.output_dir).mkdir(parents=True, exist_ok=True)
    config = sft_config(settings)
    keys = [_prepared_key(rows, tokenizer, config) if rows is not None else None for rows in (train, validation)]
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=_PREPARED.get(keys[0]) or to_dataset(train),
        eval_dataset=(_PREPARED.get(keys[1]) or to_dataset(validation)) if validation is not None else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=peft_config,
    )
    # TRL's tokenized rows, kept for the next trainer on the same rows, tokenizer and lengths: a
    # notebook that trains 20 short runs tokenizes its data once (~1 s a run on 2 cores)
    _PREPARED[keys[0]] = trainer.train_dataset
    if keys[1] is not None:
        _PREPARED[keys[1]] = trainer.eval_dataset
    # TRL casts a 4-bit model's adapters to bf16; whatever trains is fp32 (ftlearn.precision)
    undo_trl_adapter_cast(trainer.model, torch.float32)
    if not print_logs:  # the logs stay in trainer.state.log_history (and in LiveLossPlot)
        trainer.remove_callback(PrinterCallback)
    return trainer


def train_sft(
    model,
    tokenizer,
    train,
    settings: SFTSettings,
    validation=None,
    callbacks=None,
    resume_from: str | None = None,
) -> dict:
    """Fine-tune `model` on `train` in place; returns the run's numbers and its loss history.

    `resume_from="last"` continues from the newest checkpoint in `settings.output_dir` (a path
    names one checkpoint): weights, optimizer, scheduler, RNG states and data order all resume.
    """
    trainer = make_trainer(model, tokenizer, train, settings, validation, callbacks)
    if resume_from == "last":
        resume_from = last_checkpoint(settings.output_dir)
    result = trainer.train(resume_from_checkpoint=resume_from)
    return {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "seconds": result.metrics.get("train_runtime"),
        "history": trainer.state.log_history,
        "settings": asdict(settings),
    }


class LiveLossPlot(TrainerCallback):
    """Redraws training (and validation) loss in the notebook while a Trainer runs.

    In Jupyter the figure updates in place every `every` logs; run headless (nbval, nbclient) the
    same display ends as one static figure of the whole run.
    """

    def __init__(self, title: str = "loss", every: int = 1):
        self.title, self.every, self.handle, self.n = title, every, None, 0
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.train.append((state.global_step, float(logs["loss"])))
        if "eval_loss" in logs:
            self.val.append((state.global_step, float(logs["eval_loss"])))
        self.n += 1
        if self.n % self.every == 0:
            self.draw()

    def on_train_end(self, args, state, control, **kwargs):
        self.draw()

    def draw(self) -> None:
        """Draw (or redraw) the figure from the losses logged so far."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig, ax = plt.subplots(figsize=(6, 3))
        if self.train:
            ax.plot(*zip(*self.train, strict=True), label="train")
        if self.val:
            ax.plot(*zip(*self.val, strict=True), "o-", label="validation")
        ax.set(xlabel="step", ylabel="loss", title=self.title)
        ax.legend()
        fig.tight_layout()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


def last_checkpoint(output_dir: str) -> str:
    """The newest `checkpoint-N` folder in `output_dir`; a clear error if there is none."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if found is None:
        raise FileNotFoundError(
            f"No checkpoint-N folder in {output_dir}: the run saved none "
            "(set save_steps) or wrote elsewhere; nothing to resume."
        )
    return found


class StopAfter(TrainerCallback):
    """Stops training after `steps` optimizer steps, as if the run were interrupted there."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_save = True  # keep the checkpoint an interruption would leave
            control.should_training_stop = True
        return control


def loss_history(history: list[dict]):
    """A Trainer's log history as a DataFrame: step, train loss, validation loss."""
    import pandas as pd

    rows = [
        {"step": h["step"], "loss": h.get("loss"), "eval_loss": h.get("eval_loss")}
        for h in history
        if "loss" in h or "eval_loss" in h
    ]
    return pd.DataFrame(rows).groupby("step").first().reset_index()


def plot_runs(histories: dict[str, list[dict]], key: str = "eval_loss", title: str = ""):
    """One figure comparing runs: `key` ("loss" or "eval_loss") against the step, a line per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for name, history in histories.items():
        df = loss_history(history).dropna(subset=[key])
        ax.plot(df["step"], df[key], marker="o" if key == "eval_loss" else None, label=name)
    ax.set(xlabel="step", ylabel=key.replace("_", " "), title=title)
    ax.legend()
    fig.tight_layout()
    return fig
