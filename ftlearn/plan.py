"""Every training run the notebooks make, sized from a profile, and whether each fits its machine.

`catalogue(profile)` is the one place that sizes the runs of 03-07 (08 and 08b: from
`ftlearn.preference.sizes`) (model, method, batch, sequence
length, checkpointing, optimizer, LoRA rank and targets); the notebooks build their settings from it
(`run(profile, key).settings(...)`), and `ftlearn plan PROFILE` prints each run's predicted peak
(`ftlearn.estimator.estimate`, from the model's shape alone: no download) against the profile's target
machine (`profiles.TARGETS`), and fails if any does not fit with a margin (`MARGIN`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ftlearn.estimator import GiB, MemoryEstimate, TrainingSetup, estimate
from ftlearn.precision import policy, summary
from ftlearn.profiles import PROFILES, TARGETS, Profile, on_target
from ftlearn.shapes import MODELS, ModelShape, as_shape, fmt_params

ALL = tuple(PROFILES)  # `ftlearn plan all`

# A run must fit in 90% of the target: room for what the estimate leaves out (it lands within 5-20%
# of measured peaks, 06_qlora section 2) and for the allocator's rounding.
MARGIN = 0.10
OVERHEAD_GB = {  # kept free beside the tensors the estimate counts (GiB)
    "cuda": 1.0,  # CUDA's context and the allocator's fragmentation (as estimator.will_it_fit)
    "cpu": 1.0,  # the interpreter, torch and the libraries: the tiny notebooks peak at 1.2-1.9 GiB RSS
}

# The longest chat (prompt + answer, chat template included) of the rows a run trains on, in tokens
# of the course's tiny tokenizer. SmolLM2's tokenizer makes every one shorter (97, 45, 44 and 68), so
# this bounds both; tests/test_plan.py recounts them from the shipped data.
LONGEST_TOKENS = {"all": 129, "short_answer": 59, "yes_no": 57, "rewrite": 93}


@dataclass(frozen=True)
class Run:
    """One training run of a notebook: what `plan` predicts and what the notebook's settings use."""

    key: str  # "notebook/name", e.g. "03_sft/main"
    model: str  # "base", "instruct" or "qlora" (models.load's `which`), or a shape in shapes.MODELS
    method: str  # "full", "lora" or "qlora": decides the dtypes (ftlearn.precision)
    batch_size: int
    max_steps: int = -1  # -1: `epochs`
    epochs: float | None = None  # None: the profile's
    grad_accum: int = 1
    rows: str = "all"  # the task its rows come from, for the longest sequence (LONGEST_TOKENS)
    seq_len: int | None = None  # fixed length (random tokens); None: the longest of `rows`
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"  # as estimator.OPTIMIZER_BYTES names them
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
    train_rows: int | None = None  # the first N training rows it trains on; None: all of them
    val_rows: int | None = None  # the first N validation rows of its evaluations
    eval_steps: int | None = None  # validation loss every N steps; None: the notebook's choice
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
        if self.eval_steps is not None:
            sizes["eval_steps"] = self.eval_steps
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
    """Every training run of notebooks 03, 04, 06, 07, 08, 08b, 09, 10 and 11 on `profile`, by key."""
    p = profile
    r, a, targets = p.lora_r, p.lora_alpha, tuple(p.lora_targets)
    lora = dict(lora_r=r, lora_alpha=a, lora_targets=targets)
    half = max(1, p.batch_size // 2)  # 07: half the batch, twice the updates per example
    # 04 trains 20 short runs: on a CPU a quarter of the batch (8 on tiny; 2 at least), the same 20
    # updates on half 07's examples, so that the notebook fits its 3 minutes (issue 9)
    b04 = half if p.device == "cuda" else max(2, p.batch_size // 4)
    quarter = max(1, p.batch_size // 4)
    short = dict(rows="short_answer")
    # fmt: off
    # 03_sft: section 3's fine-tuned model stays in memory beside every later run. On the tiny model
    # a side run costs seconds; on a profile too slow to train whole epochs (max_steps > 0, e.g.
    # smol: ~7 s a step of 4 and ~15 s an evaluation of 32 rows on 2 cores, measured), each side run
    # shrinks to what still shows its point, so the notebook stays within minutes (00's cost table).
    fine_tuned = ("base:full",)
    slow = p.max_steps > 0
    val = 16 if slow else 64
    # the main run on a CPU (tiny): 0.4 epochs of batch 16, 68 steps, 40-50 s. Exact match on the test
    # split (2026-12-02, seeds 0-2): 54-62%; 0.6 epochs 64-67%; 1.5 epochs of 32, 76% at 3.5x the cost
    gpu = p.device == "cuda"
    main_batch = p.batch_size if slow or gpu else max(1, p.batch_size // 2)
    runs = [
        Run("03_sft/main", "base", "full", main_batch, p.max_steps, epochs=None if slow or gpu else 0.4,
            val_rows=32 if slow else 128, eval_steps=50 if slow or gpu else 20),
        Run("03_sft/overfit", "base", "full", 4 if slow else 8, -1, epochs=10 if slow else 16,
            held=fine_tuned, train_rows=8 if slow else 16, val_rows=16 if slow else 32,
            eval_steps=4, note="8 examples x 10 epochs (20 steps of 4) on slow "
            "profiles, else 16 x 16 (32 steps of 8)"),
        Run("03_sft/learning rate", "base", "full", min(16, p.batch_size), 12 if slow else 16,
            held=fine_tuned, count=3, train_rows=48 if slow else 256, val_rows=val,
            eval_steps=4 if slow else 8, note="the profile's rate / 10, x 1, x 3"),
        Run(f"03_sft/batch {p.batch_size} x 1", "base", "full", p.batch_size, 2, held=fine_tuned),
        Run(f"03_sft/batch {quarter} x 4", "base", "full", quarter, 2, grad_accum=4,
            held=fine_tuned, note="as many examples a step as the run above"),
        Run(f"03_sft/batch {quarter} x 4 + checkpointing", "base", "full", quarter, 2,
            grad_accum=4, gradient_checkpointing=True, held=fine_tuned),
        Run("03_sft/resume", "base", "full", 4 if slow else 8, 6,
            held=fine_tuned, count=3, train_rows=24 if slow else 48,
            note="uninterrupted; interrupted halfway; resumed"),
    ]
    # 04_lora, on short answers: the base model (fp32, inference), the hand-made LoRA model and
    # its peft twin (16-bit bases) stay in memory, then the fully fine-tuned model of section 4
    before = ("base:full", "base:lora", "base:lora")
    after = (*before, "base:full")
    runs += [
        Run("04_lora/full", "base", "full", b04, 20, held=before, **short),
        Run("04_lora/lora", "base", "lora", b04, 20, held=("base:full", "base:lora", "base:full"),
            **short, **lora, note="the notebook's own LoRALinear; its twin and 04_lora/full held"),
        Run("04_lora/peak full", "base", "full", p.batch_size, loss="logits", autocast=False,
            held=after, **short, note="training_peak: 2 steps on a copy of the trained model"),
        Run("04_lora/peak lora", "base", "lora", p.batch_size, loss="logits", autocast=False,
            held=after, **short, **lora, note="training_peak: 2 steps on a copy"),
    ]
    # ranks at alpha = 2r, then alphas at the profile's rank (whose run is 04_lora/lora)
    for rank, alpha in [(1, 2), (2, 4), (4 * r, 8 * r), (r, r // 2), (r, 8 * r)]:
        runs.append(Run(f"04_lora/r{rank}-alpha{alpha}", "base", "lora", b04, 20, held=after,
                        lora_r=rank, lora_alpha=alpha, lora_targets=targets, **short))
    # Section 5's seeds (settings seed: LoRA's random A and the data order). `count` = the seeds
    # run here, after seed 0 where the sweep above ran it. Three rules for the scaling s all give
    # s = 2 at the profile's rank and differ in how s moves with r: alpha = 2r keeps
    # s = alpha / r = 2; alpha fixed at the profile's (the LoRA paper) gives s = 16 / 32 = 0.5 at 4r;
    # rsLoRA (s = alpha / sqrt(r)) with alpha = 2 sqrt(r) = 5.66 gives s = 5.66 / sqrt(32) = 1.
    # 3 seeds: 12 runs of 20 steps of 8, ~7.5 s each on the tiny profile (91 s, measured alone on
    # 2 cores, 2026-12-01; 131 s at batch 16); 2 on slow profiles (7 runs).
    seeds = dict(lora_targets=targets, held=after, **short)
    n_seeds = 2 if slow else 3
    for rank, alpha, count in [(r, a, n_seeds - 1), (r, 8 * r, n_seeds - 1),
                               (4 * r, 8 * r, n_seeds - 1), (4 * r, a, n_seeds)]:
        runs.append(Run(f"04_lora/seeds r{rank}-alpha{alpha}", "base", "lora", b04, 20,
                        lora_r=rank, lora_alpha=alpha, count=count, **seeds))
    runs.append(Run(f"04_lora/use_rslora r{4 * r}", "base", "lora", b04, 20, lora_r=4 * r,
                    lora_alpha=2 * r**0.5, count=n_seeds, note="use_rslora=True: s = alpha / sqrt(r)",
                    **seeds))
    runs.append(Run("04_lora/exercise lr x4", "base", "lora", b04, 20, held=after, **short, **lora,
                    note="exercise 04.3: the profile's rank and alpha at 4x the learning rate"))
    runs += [
        Run("04_lora/attention-only", "base", "lora", b04, 20, held=after, lora_r=r,
            lora_alpha=a, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"), **short),
        # the previous adapter's model is still in memory while the next one loads
        Run("04_lora/adapter-yes_no", "base", "lora", b04, 20, rows="yes_no", **lora,
            held=(*after, "base:lora")),
        Run("04_lora/adapter-rewrite", "base", "lora", b04, 30, rows="rewrite", **lora,
            held=(*after, "base:lora"), note="a rewrite is a longer answer to learn: 30 steps"),
    ]
    # 06_qlora: section 1's 4-bit model stays in memory. Sections 2 and 3 compare the methods on
    # the profile's base model: the comparison needs one model that all three fit, and full
    # fine-tuning of the QLoRA model does not (SmolLM2-1.7B: ~26 GiB, on a T4's 15).
    section1 = ("qlora:qlora",)
    steps, batch = 30, min(p.batch_size, 16)  # 30 x 16: 06 within its 3 minutes on tiny (issue 9)
    fixed = dict(seq_len=128, loss="logits", autocast=False, held=section1, **lora)
    qlora = dict(gradient_checkpointing=True, lora_dropout=0.05)
    optimizer8 = "paged_adamw_8bit" if p.device == "cuda" else "adamw_8bit"  # paging needs CUDA
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
        # the control: QLoRA's recipe (checkpointing, dropout, 8-bit AdamW) on the 16-bit (CPU:
        # fp32) base, so that it differs from the QLoRA run in the base's storage alone
        Run("06_qlora/lora + checkpointing", "base", "lora", batch, steps, held=section1,
            **qlora, **lora, optimizer=optimizer8, note="QLoRA's run without the 4-bit base"),
        Run("06_qlora/qlora", "base", "qlora", batch, steps, held=section1, **qlora, **lora,
            optimizer=optimizer8),
    ]
    # 07_peft_methods, on short answers, every method on the same budget (20 steps x half the
    # batch): a learning-rate sweep at seed 0, scored on validation, then more seeds at the best
    # rate, scored on test (seed 0's run is the sweep's, not run twice). The base model (fp32,
    # inference) stays in memory, and the best run of each method until section 5 has timed it.
    # On a CPU only the weak methods sweep (their rates were the guesses): a sweep of all six on
    # tiny (2026-12-01, validation exact match at / 3, x 1, x 3) found LoRA's and DoRA's centre best
    # (34/59/28% and 34/60/39%), and the adapter's centre was measured best before (LR_SCALE), so
    # 6 x 3 + 3 x 2 = 12 runs become 6; prompt tuning's sweep was flat twice (2/4/3% at 3e-2, 9e-2,
    # 2.7e-1, at 20 steps, validation) and costs 30 s of the notebook's 203 s (measured alone on 2
    # cores), so on a CPU it runs at its centre: (IA)3 and prefix tuning sweep. A second seed for every method (6 more runs, 87 s of the
    # notebook's 263 s, measured alone on 2 cores) runs on a GPU only: on a CPU the margins are the
    # bootstrap over the test questions, and 04's section 5 measures what a seed moves. On a slow
    # profile (smol: ~7 s a step) one rate and one seed, 20 steps a method, as before.
    held07 = ("base:full", *("base:lora",) * 6)
    seeds = 1 if slow or p.device == "cpu" else 2
    for method in ("lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "bottleneck"):
        weak = method in ("ia3", "prefix_tuning")  # on a CPU, the methods whose rate matters
        rates = 1 if slow or (p.device == "cpu" and not weak) else 3
        peft = dict(adapter=method, **short, **lora)
        runs += [
            Run(f"07_peft_methods/{method} sweep", "base", "lora", half, 20, held=held07,
                count=rates, **peft, note="peft_methods.sweep_rates: the centre / 3, x 1, x 3"),
            Run(f"07_peft_methods/{method}", "base", "lora", half, 20, held=held07, count=seeds,
                **peft, note=f"seeds 0-{seeds - 1} at the best rate; seed 0 is the sweep's run"),
            Run(f"07_peft_methods/{method} peak", "base", "lora", p.batch_size, loss="logits",
                autocast=False, held=held07, **peft,
                note="training_peak: 2 steps on a copy of the trained model"),
        ]
    # 08_preference_tuning and 08b_rlhf_grpo, sized by ftlearn.preference.sizes (the notebooks read
    # it too). Every preference trainer is full fine-tuning here. A pair is two rows of the batch
    # (chosen and rejected); a GRPO step trains on its prompts x 4 sampled answers. The SFT start
    # stays in memory beside every run (the KL is measured against it, and it is DPO's reference),
    # with the reward model; GRPO loads its own reference. A run's models are dropped once measured
    # (preference.numbers), except 08's DPO at beta 0.1, which its exercise 1 reads.
    from ftlearn.preference import hedging_size
    from ftlearn.preference import sizes as preference_sizes

    s8, sft, rm = preference_sizes(p), "instruct:full", "base:full"
    if p.source != "embedded":  # the embedded default ships tiny-hedging
        steps, batch = hedging_size(p)
        runs.append(Run("08_preference_tuning/hedging SFT", "instruct", "full", batch, steps,
                        note="once per profile: saved to runs/08/hedging-<profile>"))
    for nb in ("08_preference_tuning", "08b_rlhf_grpo"):
        runs.append(Run(f"{nb}/reward model", "base", "full", 2 * s8["rm_batch"], s8["rm_steps"], held=(sft,),
                        note=f"{s8['rm_steps']} steps x {s8['rm_batch']} pairs, a value head on the base"))
    dpo = dict(batch_size=2 * s8["dpo_batch"], max_steps=s8["dpo_steps"])
    runs += [
        Run("08_preference_tuning/DPO", "instruct", "full", **dpo, held=(sft, rm),
            note=f"{s8['dpo_steps']} steps x {s8['dpo_batch']} pairs; the SFT start is the reference"),
        Run("08_preference_tuning/DPO β sweep", "instruct", "full", **dpo, count=2, held=(sft, rm, sft),
            note="β 0.03 and 0.3, beside the β 0.1 run's policy"),
        Run("08_preference_tuning/ORPO", "instruct", "full", **dpo, held=(sft, rm, sft), note="no reference"),
        Run("08b_rlhf_grpo/GRPO", "instruct", "full", 4 * s8["grpo_prompts"], s8["grpo_steps"], count=3,
            held=(sft, rm, sft), note=f"RLHF, hacked, RLVR: {s8['grpo_prompts']} prompts x 4 answers a step"),
    ]
    # 09_evaluation scores tiny-base and tiny-instruct (both in memory) beside a LoRA and a full
    # fine-tune of the base on one budget (04's reference: 20 steps), LoRA over 3 seeds (the seed
    # spread), and LoRA once more with test rows leaked into its training rows (contamination).
    held09 = ("base:full", "instruct:full")
    runs += [
        Run("09_evaluation/lora", "base", "lora", b04, 20, count=3, held=held09, **lora, note="seeds 0-2"),
        Run("09_evaluation/full", "base", "full", b04, 20, held=(*held09, "base:lora")),
        Run("09_evaluation/leak", "base", "lora", b04, 20, held=(*held09, "base:lora", "base:full"), **lora,
            note="the same budget, with test rows in its training rows"),
    ]
    # 10_deployment deploys a LoRA and a QLoRA fine-tune of the base on 04's reference budget
    # (20 steps), the QLoRA adapter beside the 4-bit base it was trained on.
    runs += [
        Run("10_deployment/lora", "base", "lora", b04, 20, **lora, note="merged, saved, exported, served"),
        Run("10_deployment/qlora", "base", "qlora", b04, 20, held=("base:lora",), **lora,
            note="served three ways: on its 4-bit base, merged, merged and re-quantized"),
    ]
    # 11_grounding_vs_finetuning: continued pre-training of the instruct model on the new towns'
    # documents (blocks of 128), then SFT to restore the chat format; the instruct model and the
    # reader stay in memory. The reader ships on the embedded default; elsewhere RAFT trains it.
    held11 = ("instruct:full", "instruct:full")
    b11 = 16 if p.source == "embedded" else p.batch_size
    runs += [
        Run("11_grounding_vs_finetuning/continued pre-training", "instruct", "full", b11, 40, seq_len=128, held=held11,
            note="the 20 new towns' 240 documents + 300 general sentences, ~2.2 epochs"),
        Run("11_grounding_vs_finetuning/SFT after", "instruct", "full", b11, 20, held=held11, note="03's training rows"),
        Run("11_grounding_vs_finetuning/continued pre-training, LoRA", "instruct", "lora", b11, 40, seq_len=128,
            held=(*held11, "instruct:full"), **lora, note="the same, with LoRA"),
        Run("11_grounding_vs_finetuning/SFT after, LoRA", "instruct", "lora", b11, 20, held=(*held11, "instruct:full"),
            **lora, note="the same adapter, on 03's training rows"),
    ]
    embedded = p.source == "embedded"  # tiny-reader ships: `ftlearn build-tiny --reader-only` trains it, not 11
    runs.append(Run("11_grounding_vs_finetuning/RAFT", "instruct", "full", 32 if embedded else p.batch_size,
                    1500 if embedded else p.max_steps if slow else 400, held=() if embedded else ("instruct:full",),
                    note="ftlearn.tiny.reader_rows" + ("; the build's run (ftlearn.tiny.READER)" if embedded else "")))
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


def setup_for(profile: Profile, run: Run) -> TrainingSetup:
    """The estimator's `TrainingSetup` of the run: its longest batch, as its precision policy stores it."""
    precision = policy(profile, run.method)
    if run.dtype or not run.autocast:  # no Trainer: everything computes in the weights' dtype
        dtypes = {"dtype": run.dtype or precision.load_dtype, "mixed_precision": False}
        if run.method == "qlora":
            dtypes["dtype"] = precision.compute_dtype
    else:
        dtypes = precision.estimate_args()
    # 07's other PEFT methods train fewer values than LoRA at the profile's rank and are counted as
    # LoRA; DoRA's extra (W + sBA per adapted layer, in its forward) is left out
    return TrainingSetup(
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


def predict(profile: Profile, run: Run) -> MemoryEstimate:
    """`estimator.estimate` of the run: one training step of its longest batch."""
    return estimate(model_shape(profile, run.model), setup_for(profile, run))


def held_bytes(profile: Profile, run: Run) -> int:
    """Bytes of the weights of the other models the notebook keeps in memory beside the run."""
    total = 0
    for entry in run.held:
        role, method = entry.split(":")
        setup = TrainingSetup(method, lora_r=profile.lora_r, lora_targets=tuple(profile.lora_targets),
                              **policy(profile, method).estimate_args())  # fmt: skip
        total += estimate(model_shape(profile, role), setup).weights
    return total


@dataclass(frozen=True)
class Row:
    """One line of the plan: a run, its predicted peak and whether it fits."""

    run: Run
    shape_params: int
    tokens: int
    peak: int  # bytes: the run's own step (estimator.estimate(...).total)
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
    return (memory_gb * (1 - MARGIN) - overhead) * GiB


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
        f"GiB of overhead = {usable_bytes(profile, memory) / GiB:.1f} GiB",
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
            f"{row.peak / GiB:>9.2f}{row.held / GiB:>8.2f}{row.total / GiB:>8.2f} "
            f"{'✓' if row.fits else '✗ does not fit'}"
        )
    worst = max(table, key=lambda row: row.total)
    lines.append(
        f"largest: {worst.run.key}, {worst.total / GiB:.2f} GiB of {worst.usable / GiB:.1f} usable (GiB)"
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


def batch_memory(profile: Profile, batch_size: int, grad_accum: int = 1, checkpointing: bool = False) -> dict:
    """Predicted MiB of 03's main run at another batch, accumulation and checkpointing."""
    from ftlearn.estimator import MiB, activation_bytes

    sized = replace(run(profile, "03_sft/main"), batch_size=batch_size, grad_accum=grad_accum,
                    gradient_checkpointing=checkpointing)  # fmt: skip
    shape, setup = model_shape(profile, "base"), setup_for(profile, sized)
    est, act = estimate(shape, setup), activation_bytes(shape, setup)
    return {"examples a step": batch_size * grad_accum, "weights, gradients, AdamW": (est.weights + est.gradients + est.optimizer) / MiB,
            "layers": act["layers"] / MiB, "logits and loss": act["logits"] / MiB, "peak": est.total / MiB}  # fmt: skip


def batch_widget(profile: Profile, static: bool = True):
    """An ipywidgets control (batch, accumulation, checkpointing) -> 03's predicted peak, in MiB.

    `static=True` first displays the grid a page without a live kernel shows in its place.
    """
    import pandas as pd
    from IPython.display import display

    b = profile.batch_size
    grid = {f"{k} x {a}{' + ckpt' if c else ''}": batch_memory(profile, k, a, c)
            for k, a, c in [(b, 1, False), (b // 2, 2, False), (b // 4, 4, False), (b // 4, 4, True), (2 * b, 1, False)]
            if k >= 1}  # fmt: skip
    if static:
        display(pd.DataFrame(grid).T.round(1))
    try:
        import ipywidgets as widgets
    except ImportError:
        return None
    controls = {
        "batch_size": widgets.IntSlider(value=b, min=1, max=4 * b, description="batch"),
        "grad_accum": widgets.IntSlider(value=1, min=1, max=16, description="accumulate"),
        "checkpointing": widgets.Checkbox(value=False, description="checkpointing"),
    }

    def show(**knobs):
        print(pd.Series(batch_memory(profile, **knobs)).round(1).to_string())

    class BatchControl(widgets.VBox):
        def __repr__(self) -> str:  # what a page without a live kernel prints in its place
            return "[batch-memory control: live in Jupyter and Colab; the table above is its grid]"

    return BatchControl([*controls.values(), widgets.interactive_output(show, controls)])
