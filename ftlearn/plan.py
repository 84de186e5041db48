"""Every training run the notebooks make, sized from a profile, and whether each fits its machine.

`catalogue(profile)` is the one place that sizes the runs of 03-07 (model, method, batch, sequence
length, checkpointing, optimizer, LoRA rank and targets); the notebooks build their settings from it
(`run(profile, key).settings(...)`), and `ftlearn plan PROFILE` prints each run's predicted peak
(`ftlearn.memory.estimate`, from the model's shape alone: no download) against the profile's target
machine (`profiles.TARGETS`), and fails if any does not fit with a margin (`MARGIN`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ftlearn.memory import GB, MODELS, MemoryEstimate, ModelShape, as_shape, estimate, fmt_params
from ftlearn.precision import policy, summary
from ftlearn.profiles import PROFILES, TARGETS, Profile, on_target

ALL = tuple(PROFILES)  # `ftlearn plan all`

# A run must fit in 90% of the target: room for what the estimate leaves out (it lands within 5-20%
# of measured peaks, 06_qlora section 2) and for the allocator's rounding.
MARGIN = 0.10
OVERHEAD_GB = {  # kept free beside the tensors the estimate counts (GiB)
    "cuda": 1.0,  # CUDA's context and the allocator's fragmentation (as memory.will_it_fit)
    "cpu": 1.0,  # the interpreter, torch and the libraries: the tiny notebooks peak at 1.2-1.9 GB RSS
}

# The longest chat (prompt + answer, chat template included) of the rows a run trains on, in tokens
# of the course's tiny tokenizer. SmolLM2's tokenizer makes every one shorter (97, 45, 44 and 68), so
# this bounds both; tests/test_plan.py recounts them from the shipped data.
LONGEST_TOKENS = {"all": 129, "short_answer": 59, "yes_no": 57, "rewrite": 93}


@dataclass(frozen=True)
class Run:
    """One training run of a notebook: what `plan` predicts and what the notebook's settings use."""

    key: str  # "notebook/name", e.g. "03_sft/main"
    model: str  # "base", "instruct" or "qlora" (models.load's `which`), or a shape in memory.MODELS
    method: str  # "full", "lora" or "qlora": decides the dtypes (ftlearn.precision)
    batch_size: int
    max_steps: int = -1  # -1: `epochs`
    epochs: float | None = None  # None: the profile's
    grad_accum: int = 1
    rows: str = "all"  # the task its rows come from, for the longest sequence (LONGEST_TOKENS)
    seq_len: int | None = None  # fixed length (random tokens); None: the longest of `rows`
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"  # as memory.estimate names them
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_targets: tuple[str, ...] = ()
    lora_dropout: float = 0.0
    adapter: str = "lora"  # the PEFT method (07); the estimate counts every one as LoRA
    loss: str = "trl"  # "trl": through SFTTrainer; "logits": model(labels=...) (training_peak)
    autocast: bool = True  # False: a plain loop in the load dtype, without the Trainer's autocast
    dtype: str | None = None  # a model built from a config: its dtype, whatever the policy
    held: tuple[str, ...] = ()  # "role:method" of the other models the notebook keeps in memory
    count: int = 1  # runs of these sizes the notebook makes (a learning-rate sweep: 3)
    note: str = ""

    @property
    def name(self) -> str:
        """The key without its notebook: "batch 32 x 1"."""
        return self.key.split("/", 1)[1]

    def settings(self, profile: Profile, output_dir: str, **overrides):
        """The run's `SFTSettings`: its sizes and precision, then `overrides` (learning rate, logging)."""
        from ftlearn.training import settings_for

        sizes = dict(
            batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            max_steps=self.max_steps,
            gradient_checkpointing=self.gradient_checkpointing,
        )
        if self.epochs is not None:
            sizes["epochs"] = self.epochs
        return settings_for(profile, output_dir, self.method, **(sizes | overrides))

    def lora_config(self, profile: Profile, **overrides):
        """The peft `LoraConfig` of this run: its rank, alpha, targets and dropout."""
        from ftlearn.lora import lora_config

        return lora_config(
            profile,
            r=self.lora_r,
            alpha=self.lora_alpha,
            targets=list(self.lora_targets),
            dropout=self.lora_dropout,
            **overrides,
        )


def catalogue(profile: Profile) -> dict[str, Run]:
    """Every training run of notebooks 03, 04, 06 and 07 on `profile`, by key."""
    p = profile
    r, a, targets = p.lora_r, p.lora_alpha, tuple(p.lora_targets)
    lora = dict(lora_r=r, lora_alpha=a, lora_targets=targets)
    half = max(1, p.batch_size // 2)  # 04 and 07: half the batch, twice the updates per example
    quarter = max(1, p.batch_size // 4)
    short = dict(rows="short_answer")
    # fmt: off
    # 03_sft: section 3's fine-tuned model stays in memory beside every later run
    fine_tuned = ("base:full",)
    runs = [
        Run("03_sft/main", "base", "full", p.batch_size, p.max_steps),
        Run("03_sft/overfit", "base", "full", 8, -1, epochs=16, held=fine_tuned,
            note="32 examples / batch 8 = 4 steps an epoch: 64 steps"),
        Run("03_sft/learning rate", "base", "full", min(16, p.batch_size), 24, held=fine_tuned,
            count=3, note="the profile's rate / 10, x 1, x 3, on 384 examples"),
        Run(f"03_sft/batch {p.batch_size} x 1", "base", "full", p.batch_size, 4, held=fine_tuned),
        Run(f"03_sft/batch {quarter} x 4", "base", "full", quarter, 4, grad_accum=4,
            held=fine_tuned, note="as many examples a step as the run above"),
        Run(f"03_sft/batch {quarter} x 4 + checkpointing", "base", "full", quarter, 4,
            grad_accum=4, gradient_checkpointing=True, held=fine_tuned),
        Run("03_sft/resume", "base", "full", 8, 20, held=fine_tuned, count=3,
            note="uninterrupted; interrupted at step 10; resumed"),
    ]
    # 04_lora, on short answers: the base model (fp32, inference), the hand-made LoRA model and
    # its peft twin (16-bit bases) stay in memory, then the fully fine-tuned model of section 4
    before = ("base:full", "base:lora", "base:lora")
    after = (*before, "base:full")
    runs += [
        Run("04_lora/full", "base", "full", half, 20, held=before, **short),
        Run("04_lora/lora", "base", "lora", half, 20, held=("base:full", "base:lora", "base:full"),
            **short, **lora, note="the notebook's own LoRALinear; its twin and 04_lora/full held"),
        Run("04_lora/peak full", "base", "full", p.batch_size, loss="logits", autocast=False,
            held=after, **short, note="training_peak: 2 steps on a copy of the trained model"),
        Run("04_lora/peak lora", "base", "lora", p.batch_size, loss="logits", autocast=False,
            held=after, **short, **lora, note="training_peak: 2 steps on a copy"),
    ]
    # ranks at alpha = 2r, then alphas at the profile's rank (whose run is 04_lora/lora)
    for rank, alpha in [(1, 2), (2, 4), (4 * r, 8 * r), (r, r // 2), (r, 8 * r)]:
        runs.append(Run(f"04_lora/r{rank}-alpha{alpha}", "base", "lora", half, 20, held=after,
                        lora_r=rank, lora_alpha=alpha, lora_targets=targets, **short))
    runs += [
        Run("04_lora/attention-only", "base", "lora", half, 20, held=after, lora_r=r,
            lora_alpha=a, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), **short),
        # the previous adapter's model is still in memory while the next one loads
        Run("04_lora/adapter-yes_no", "base", "lora", half, 20, rows="yes_no", **lora,
            held=(*after, "base:lora")),
        Run("04_lora/adapter-rewrite", "base", "lora", half, 30, rows="rewrite", **lora,
            held=(*after, "base:lora"), note="a rewrite is a longer answer to learn: 30 steps"),
    ]
    # 06_qlora: section 1's 4-bit model stays in memory. Sections 2 and 3 compare the methods on
    # the profile's base model: the comparison needs one model that all three fit, and full
    # fine-tuning of the QLoRA model does not (SmolLM2-1.7B: ~26 GiB, on a T4's 15).
    section1 = ("qlora:qlora",)
    steps, batch = 40, min(p.batch_size, 16)
    fixed = dict(seq_len=128, loss="logits", autocast=False, held=section1, **lora)
    qlora = dict(gradient_checkpointing=True, lora_dropout=0.05)
    runs += [
        Run("06_qlora/backward", "qlora", "qlora", 1, 1, optimizer="sgd", loss="logits",
            autocast=False, **qlora, **lora, note="one backward pass of one example, no step"),
        Run("06_qlora/estimate full", "base", "full", 4, 2, **fixed),
        Run("06_qlora/estimate full, TRL's loss", "base", "full", 4, 2, **fixed | {"loss": "trl"}),
        Run("06_qlora/estimate lora", "base", "lora", 4, 2, lora_dropout=0.05, **fixed),
        Run("06_qlora/estimate qlora", "base", "qlora", 4, 2, optimizer="paged_adamw_8bit",
            **qlora, **fixed),
        Run("06_qlora/estimate SmolLM2-135M lora", "SmolLM2-135M", "lora", 1, 1, dtype="float32",
            lora_dropout=0.05, **fixed | {"seq_len": 64}, note="random weights, from its config"),
        Run("06_qlora/full", "base", "full", batch, steps, held=section1,
            note=f"{steps} steps x {batch} = {steps * batch} examples"),
        Run("06_qlora/lora", "base", "lora", batch, steps, held=section1, lora_dropout=0.05,
            **lora),
        Run("06_qlora/qlora", "base", "qlora", batch, steps, held=section1, **qlora, **lora,
            optimizer="paged_adamw_8bit" if p.device == "cuda" else "adamw_8bit"),
    ]
    # 07_peft_methods, on short answers: the base model (fp32, inference) stays in memory, and the
    # previous method's model until the next one is built
    held07 = ("base:full", "base:lora")
    for method in ("lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "bottleneck"):
        peft = dict(adapter=method, **short, **lora)
        runs += [
            Run(f"07_peft_methods/{method}", "base", "lora", half, 20, held=held07, **peft),
            Run(f"07_peft_methods/{method} peak", "base", "lora", p.batch_size, loss="logits",
                autocast=False, held=held07, **peft,
                note="training_peak: 2 steps on a copy of the trained model"),
        ]
    # fmt: on
    return {run.key: run for run in runs}


def run(profile: Profile, key: str) -> Run:
    """The run called `key` ("03_sft/main") on `profile`; an unknown key lists the valid ones."""
    runs = catalogue(profile)
    if key not in runs:
        raise KeyError(f"No run {key!r} in the catalogue. Runs: {', '.join(runs)}.")
    return runs[key]


def group(profile: Profile, prefix: str) -> list[Run]:
    """The runs whose key starts with `prefix` ("04_lora/r"), in the catalogue's order."""
    found = [r for k, r in catalogue(profile).items() if k.startswith(prefix)]
    if not found:
        raise KeyError(f"No run starts with {prefix!r}.")
    return found


# ---------------------------------------------------------------------------------------------
# Will each run fit?
# ---------------------------------------------------------------------------------------------


def model_shape(profile: Profile, model: str) -> ModelShape:
    """The ModelShape of a profile's model ("base", "instruct", "qlora") or of a shape's name."""
    if model in MODELS:
        return MODELS[model]
    name = {"base": profile.base_model, "instruct": profile.instruct_model,
            "qlora": profile.qlora_model}[model]  # fmt: skip
    if profile.source == "embedded":  # the tiny models' config ships with them
        from transformers import AutoConfig

        from ftlearn.models import resolve

        return as_shape(AutoConfig.from_pretrained(resolve(profile, model)))
    return as_shape(name.rsplit("/", 1)[-1].removesuffix("-Instruct"))


def seq_len(profile: Profile, run: Run) -> int:
    """Tokens of the run's longest batch: its fixed length, or its longest row within max_length."""
    return run.seq_len or min(profile.max_length, LONGEST_TOKENS[run.rows])


def predict(profile: Profile, run: Run) -> MemoryEstimate:
    """`memory.estimate` of the run: one training step of its longest batch, as its policy stores it."""
    precision = policy(profile, run.method)
    if run.dtype or not run.autocast:  # no Trainer: everything computes in the weights' dtype
        dtypes = {"dtype": run.dtype or precision.load_dtype, "mixed_precision": False}
        if run.method == "qlora":
            dtypes["dtype"] = precision.compute_dtype
    else:
        dtypes = precision.estimate_args()
    # 07's other PEFT methods train fewer values than LoRA at the profile's rank and are counted as
    # LoRA; DoRA's extra (W + sBA per adapted layer, in its forward) is left out
    return estimate(
        model_shape(profile, run.model),
        run.method,
        batch_size=run.batch_size,
        seq_len=seq_len(profile, run),
        optimizer=run.optimizer,
        gradient_checkpointing=run.gradient_checkpointing,
        lora_r=run.lora_r or 8,
        lora_targets=tuple(run.lora_targets) or ("q_proj", "v_proj"),
        lora_dropout=run.lora_dropout,
        loss=run.loss,
        device="cuda" if profile.device == "cuda" else "cpu",
        **dtypes,
    )


def held_bytes(profile: Profile, run: Run) -> int:
    """Bytes of the weights of the other models the notebook keeps in memory beside the run."""
    total = 0
    for entry in run.held:
        role, method = entry.split(":")
        total += estimate(
            model_shape(profile, role), method, lora_r=profile.lora_r,
            lora_targets=tuple(profile.lora_targets), **policy(profile, method).estimate_args(),
        ).weights  # fmt: skip
    return total


@dataclass(frozen=True)
class Row:
    """One line of the plan: a run, its predicted peak and whether it fits."""

    run: Run
    shape_params: int
    tokens: int
    peak: int  # bytes: the run's own step (memory.estimate(...).total)
    held: int  # bytes: the other models in memory
    usable: float  # bytes the target leaves for tensors

    @property
    def total(self) -> int:
        """Bytes in memory at the run's peak: its step and the models held beside it."""
        return self.peak + self.held

    @property
    def fits(self) -> bool:
        """True when the total stays within the usable memory."""
        return self.total <= self.usable


def usable_bytes(profile: Profile, memory_gb: float) -> float:
    """Bytes a run may use on a target of `memory_gb` GiB: less the margin, less the overhead."""
    overhead = OVERHEAD_GB["cuda" if profile.device == "cuda" else "cpu"]
    return (memory_gb * (1 - MARGIN) - overhead) * GB


def rows(
    name: str, runs: dict[str, Run] | None = None, memory_gb: float | None = None
) -> list[Row]:
    """Every run of profile `name` on its target (or on `memory_gb` GiB), with its prediction."""
    profile = on_target(name)
    usable = usable_bytes(profile, memory_gb or TARGETS[name].memory_gb)
    out = []
    for run in (runs or catalogue(profile)).values():
        est = predict(profile, run)
        out.append(
            Row(
                run,
                model_shape(profile, run.model).n_params,
                seq_len(profile, run),
                est.total,
                held_bytes(profile, run),
                usable,
            )  # fmt: skip
        )
    return out


def report(name: str, table: list[Row], memory_gb: float | None = None) -> str:
    """The plan as text: a header with the target and the policy, then a line per run."""
    profile, target = on_target(name), TARGETS[name]
    memory = memory_gb or target.memory_gb
    machine = target.name if memory_gb is None else f"{memory:g} GiB instead of {target.name}"
    lines = [
        f"profile {name} on {machine}: {memory:g} GiB; a run fits in "
        f"{1 - MARGIN:.0%} of it less {OVERHEAD_GB['cuda' if profile.device == 'cuda' else 'cpu']:g} "
        f"GiB of overhead = {usable_bytes(profile, memory) / GB:.1f} GiB",
        *(f"  {line}" for line in summary(profile).splitlines()),
        f"{'run':44}{'model':>9} {'method':7}{'batch':>9}{'tokens':>7} {'ckpt':5}{'optimizer':17}"
        f"{'LoRA':>7}{'step':>9}{'+ held':>8}{'= peak':>8}",
    ]
    for row in table:
        r = row.run
        lora = f"r={r.lora_r}" if r.method != "full" and r.lora_r else ""
        batch = f"{r.batch_size} x {r.grad_accum}"
        lines.append(
            f"{r.key + (f' (x{r.count})' if r.count > 1 else ''):44}{fmt_params(row.shape_params):>9} "
            f"{r.method if r.adapter == 'lora' else r.adapter[:7]:7}{batch:>9}{row.tokens:>7} "
            f"{'yes' if r.gradient_checkpointing else '':5}{r.optimizer:17}{lora:>7}"
            f"{row.peak / GB:>9.2f}{row.held / GB:>8.2f}{row.total / GB:>8.2f} "
            f"{'✓' if row.fits else '✗ does not fit'}"
        )
    worst = max(table, key=lambda row: row.total)
    lines.append(
        f"largest: {worst.run.key}, {worst.total / GB:.2f} GiB of {worst.usable / GB:.1f} usable (GiB)"
    )
    return "\n".join(lines)


def main(
    names: list[str], runs: dict[str, Run] | None = None, memory_gb: float | None = None
) -> int:
    """Print the plan of each profile in `names`; 1 if any run does not fit, else 0."""
    failed = 0
    for name in names:
        table = rows(name, runs, memory_gb)
        print(report(name, table, memory_gb), end="\n\n")
        failed += sum(not row.fits for row in table)
    if failed:
        print(f"{failed} run(s) do not fit: shrink their batch or length in ftlearn/plan.py.")
    return 1 if failed else 0


def oversized(run_: Run, factor: int = 64) -> Run:
    """A copy of `run_` with a batch `factor` times larger: what a plan must refuse (tests)."""
    return replace(run_, key=f"{run_.key} x{factor}", batch_size=run_.batch_size * factor)
