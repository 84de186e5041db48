"""Training speed, side by side in one run: the course's methods, and the SFT path's own overhead.

    python benchmarks/training_speed.py methods [--steps 20] [--profile tiny]
    python benchmarks/training_speed.py sft-overhead [--steps 5] [--repeats 2] [--threads 1] [--save]

`methods`: every variant trains the same profile base model on the same rows for the same number
of steps, one after another in this process, as ratios to full fine-tuning.

`sft-overhead`: the same model init, the same batches (rows in order, TRL's own tokenization and
collator) and the same optimizer, trained by a plain PyTorch loop and by `ftlearn.training`'s
SFTTrainer, and by that trainer with one of its parts switched off at a time (TRL's per-step
metrics, its fused LM head, gradient clipping; logging every step as an upper bound on logging).
The variants run interleaved, in a rotated order each repeat, so that a slow minute on a shared
machine falls on all of them alike; each ratio is taken within one repeat, against that repeat's
plain loop. The first step of every run (allocator, optimizer state) is left out. Raw step times
go to benchmarks/results/sft_overhead_<date>.json with `--save`.

Absolute seconds depend on the machine; the ratios are what the notebooks' claims rest on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
import types
from pathlib import Path

import torch

from ftlearn.estimator import MiB
from ftlearn.lora import lora_config
from ftlearn.measure import measure_peak
from ftlearn.models import load
from ftlearn.paths import run_dir
from ftlearn.profiles import get, quiet_progress_bars
from ftlearn.training import make_trainer, settings_for
from ftlearn.world import load_split

RESULTS = Path(__file__).parent / "results"

VARIANTS = {
    "full fine-tuning": {},
    "full, gradient checkpointing": {"gradient_checkpointing": True},
    "full, batch/4 x grad_accum 4": {"grad_accum": 4, "batch_divisor": 4},
    "LoRA (all linear)": {"lora": True},
}


def run(profile_name: str, steps: int) -> list[dict]:
    """Train each variant for `steps` steps; return seconds, examples/s and peak memory."""
    profile = get(profile_name)
    rows = load_split("instructions_train")
    results = []
    for name, v in VARIANTS.items():
        model, tok = load(profile, "base")
        batch = profile.batch_size // v.get("batch_divisor", 1)
        settings = settings_for(
            profile,
            str(run_dir("bench", fresh=True)),
            max_steps=steps,
            batch_size=batch,
            grad_accum=v.get("grad_accum", 1),
            logging_steps=steps,
            gradient_checkpointing=v.get("gradient_checkpointing", False),
        )
        peft = lora_config(profile) if v.get("lora") else None
        trainer = make_trainer(model, tok, rows, settings, peft_config=peft)
        trainer.train()  # warm-up run: allocator, kernels, data pipeline
        trainer = make_trainer(load(profile, "base")[0], tok, rows, settings, peft_config=peft)
        start = time.perf_counter()
        peak = measure_peak(trainer.train)
        seconds = time.perf_counter() - start
        examples = steps * batch * v.get("grad_accum", 1)
        results.append(
            {
                "variant": name,
                "seconds": seconds,
                "examples_per_s": examples / seconds,
                "peak_mib": peak / MiB,
            }
        )
    return results


# ---------------------------------------------------------------------------------------------
# The SFT path against a plain PyTorch loop
# ---------------------------------------------------------------------------------------------

# name -> what differs from ftlearn's make_trainer (None: the plain loop)
PLAIN = "plain PyTorch loop"
SFT_VARIANTS: dict[str, dict | None] = {
    PLAIN: None,
    "SFTTrainer (ftlearn)": {},
    "- entropy/accuracy/num_tokens": {"loss": "fused, no metrics"},
    "- fused LM head (model's loss)": {"loss": "model"},
    "- gradient clipping": {"max_grad_norm": 0.0},
    "+ logging every step": {"logging_steps": 1},
    "Trainer loop alone": {"loss": "model", "max_grad_norm": 0.0},
}


def _fused_loss_without_metrics(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    """SFTTrainer.compute_loss's loss (TRL's fused LM head), without its per-step metrics."""
    outputs = model(
        **inputs, use_cache=False, fused_lm_head=True, num_items_in_batch=num_items_in_batch
    )
    return (outputs.loss, outputs) if return_outputs else outputs.loss


def _model_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    """The model's own loss on full logits (what the plain loop computes), no metrics."""
    outputs = model(**inputs, use_cache=False)
    return (outputs.loss, outputs) if return_outputs else outputs.loss


def _now() -> tuple[float, float]:
    """(wall-clock, CPU) seconds. On a shared machine the CPU time of this process (one torch
    thread) counts the work a step does, whatever else the cores run; idle, the two agree."""
    return time.perf_counter(), time.process_time()


def _seen(batch) -> tuple[int, int, int]:
    """What identifies a batch: its padded shape and its number of real (non-padding) tokens."""
    return (*batch["input_ids"].shape, int(batch["attention_mask"].sum()))


def _plain_loop(model, loader, optimizer, steps: int, shapes: list) -> list[float]:
    """Forward, backward, step: the loop every tutorial writes. Returns a time stamp per step."""
    model.train()
    stamps = [_now()]
    for _, batch in zip(range(steps), loader, strict=False):
        shapes.append(_seen(batch))
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(_now())
    return stamps


def _trainer_run(profile, rows, steps: int, change: dict, shapes: list) -> list[float]:
    """`make_trainer`, as the course builds it, with one `change`; a time stamp per step."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.stamps = [_now()]

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(_now())

    model, tok = load(profile, "base")
    extra = {"train_sampling_strategy": "sequential"}  # the same batches as the plain loop
    if "max_grad_norm" in change:
        extra["max_grad_norm"] = change["max_grad_norm"]
    settings = settings_for(
        profile,
        str(run_dir("bench/sft_overhead", fresh=True)),
        max_steps=steps,
        logging_steps=change.get("logging_steps", 10),
        extra=extra,
    )
    clock = Clock()
    trainer = make_trainer(model, tok, rows, settings, callbacks=[clock])
    loss = {
        "fused, no metrics": _fused_loss_without_metrics,
        "model": _model_loss,
    }.get(change.get("loss"))
    if change.get("loss") == "fused, no metrics":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(trainer.model, outputs=("log_probs",))  # log-probs only: no entropy
    inner = types.MethodType(loss, trainer) if loss else trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        shapes.append(_seen(inputs))
        return inner(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss
    trainer.train()
    return clock.stamps


def _plain_run(profile, rows, steps: int, shapes: list) -> list[float]:
    """The plain loop on what SFTTrainer would feed: its tokenized rows, its collator, its optimizer."""
    from torch.utils.data import DataLoader
    from transformers import Trainer

    model, tok = load(profile, "base")
    settings = settings_for(profile, str(run_dir("bench/sft_overhead", fresh=True)), max_steps=1)
    trainer = make_trainer(model, tok, rows, settings)  # only to borrow its data and optimizer
    loader = DataLoader(
        trainer.train_dataset,
        batch_size=settings.batch_size,
        shuffle=False,
        collate_fn=trainer.data_collator,
    )
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs["weight_decay"] = trainer.args.weight_decay  # the Trainer's, not AdamW's default 0.01
    optimizer = cls([p for p in model.parameters() if p.requires_grad], **kwargs)
    return _plain_loop(model, loader, optimizer, steps, shapes)


def collation_seconds(profile, rows, steps: int) -> float:
    """CPU seconds per batch of TRL's collator (both paths pay it), through the Trainer's loader."""
    model, tok = load(profile, "base")
    settings = settings_for(
        profile,
        str(run_dir("bench/sft_overhead", fresh=True)),
        max_steps=steps,
        extra={"train_sampling_strategy": "sequential"},
    )
    loader = make_trainer(model, tok, rows, settings).get_train_dataloader()
    start = time.process_time()
    n = sum(1 for _ in zip(range(steps), loader, strict=False))
    return (time.process_time() - start) / n


def sft_overhead(
    profile_name: str, steps: int, repeats: int, threads: int, only: list[str] | None = None
) -> dict:
    """Interleaved runs of SFT_VARIANTS; raw per-step seconds and tokens/s ratios to the plain loop.

    Ratios use CPU seconds (see `_now`); wall-clock seconds are kept beside them in the results.
    """
    if steps < 2:
        raise ValueError("steps must be at least 2: the first step of every run is left out.")
    torch.set_num_threads(threads)
    profile = get(profile_name)
    rows = load_split("instructions_train")[: steps * profile.batch_size]  # exactly the rows used
    names = [n for n in SFT_VARIANTS if n == PLAIN or not only or any(o in n for o in only)]
    runs: dict[str, dict[str, list[list[float]]]] = {n: {"cpu": [], "wall": []} for n in names}
    reference_shapes: list | None = None
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no variant always first
        for name in order:
            change, shapes = SFT_VARIANTS[name], []
            stamps = (
                _plain_run(profile, rows, steps, shapes)
                if change is None
                else _trainer_run(profile, rows, steps, change, shapes)
            )
            if reference_shapes is None:
                reference_shapes = shapes
            if shapes != reference_shapes:
                raise RuntimeError(f"{name} saw other batches: {shapes} vs {reference_shapes}")
            for k, clock in (("wall", 0), ("cpu", 1)):  # the first step is left out
                runs[name][k].append(
                    [b[clock] - a[clock] for a, b in zip(stamps, stamps[1:], strict=False)][1:]
                )
            print(
                f"  repeat {r + 1}, {name:34} {statistics.mean(runs[name]['cpu'][-1]) * 1000:7.0f}"
                f" ms/step CPU, {statistics.mean(runs[name]['wall'][-1]) * 1000:7.0f} wall",
                flush=True,
            )
    collate = collation_seconds(profile, rows, steps)
    tokens = sum(t for *_, t in reference_shapes[1:])  # real tokens of the timed steps
    plain = runs[PLAIN]["cpu"]
    table = []
    for name in names:
        cpu = runs[name]["cpu"]
        # the same tokens in every run, so the ratio of tokens/s is the inverse ratio of the times
        ratios = [sum(plain[r]) / sum(cpu[r]) for r in range(repeats)]
        wall = runs[name]["wall"]
        wall_ratios = [sum(runs[PLAIN]["wall"][r]) / sum(wall[r]) for r in range(repeats)]
        table.append(
            {
                "variant": name,
                "ms/step": 1000 * statistics.median(statistics.mean(s) for s in cpu),
                "tokens/s": statistics.median(tokens / sum(s) for s in cpu),
                "speed vs plain": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
                "ratios": ratios,
                "wall-clock ratios": wall_ratios,  # trust them only on an idle machine
            }
        )
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch "
        f"{torch.__version__}",
        "clock": "CPU seconds of this process (time.process_time), first step of each run left out",
        "profile": profile_name,
        "batch": profile.batch_size,
        "steps": steps,
        "timed steps": steps - 1,
        "repeats": repeats,
        "batches (size, padded length, real tokens)": reference_shapes,
        "collation ms/batch": 1000 * collate,
        "step seconds": runs,
        "table": table,
    }


def sft_table(result: dict) -> str:
    """The sft-overhead result as a markdown table."""
    lines = [
        f"| variant ({result['profile']}, batch {result['batch']}, {result['timed steps']} timed "
        f"steps x {result['repeats']} repeats) | CPU ms/step | tokens/s | vs plain loop "
        "(median, min-max) |",
        "|---|---|---|---|",
    ]
    for row in result["table"]:
        lines.append(
            f"| {row['variant']} | {row['ms/step']:.0f} | {row['tokens/s']:.0f} "
            f"| {row['speed vs plain']:.3f}x ({row['min']:.3f}-{row['max']:.3f}) |"
        )
    lines.append(f"\nTRL's collator: {result['collation ms/batch']:.1f} ms a batch (both paths).")
    return "\n".join(lines)


def main() -> None:
    """Print a markdown table of the chosen comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "compare", nargs="?", default="methods", choices=("methods", "sft-overhead")
    )
    parser.add_argument("--steps", type=int, default=None, help="methods: 20; sft-overhead: 5")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--repeats", type=int, default=2, help="sft-overhead: interleaved repeats")
    parser.add_argument("--threads", type=int, default=1, help="sft-overhead: torch threads")
    parser.add_argument(
        "--only", nargs="*", help="sft-overhead: variants whose names contain these"
    )
    parser.add_argument("--save", action="store_true", help="sft-overhead: write the raw results")
    args = parser.parse_args()
    quiet_progress_bars()
    if args.compare == "sft-overhead":
        result = sft_overhead(args.profile, args.steps or 5, args.repeats, args.threads, args.only)
        print(sft_table(result))
        if args.save:
            RESULTS.mkdir(exist_ok=True)
            path = RESULTS / f"sft_overhead_{result['date']}_threads{args.threads}.json"
            path.write_text(json.dumps(result, indent=1) + "\n")
            print(f"raw results: {path.relative_to(RESULTS.parent.parent)}")
        return
    steps = args.steps or 20
    results = run(args.profile, steps)
    ref = results[0]
    print(
        f"| variant ({args.profile}, {steps} steps) | examples/s | speed vs full | peak MiB | memory vs full |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['examples_per_s']:.0f} | {r['examples_per_s'] / ref['examples_per_s']:.2f}x "
            f"| {r['peak_mib']:.0f} | {r['peak_mib'] / ref['peak_mib']:.2f}x |"
        )


if __name__ == "__main__":
    main()
