"""Training speed of the course's methods, side by side in one run, as ratios to full fine-tuning.

    python benchmarks/training_speed.py [--steps 20] [--profile tiny]

Every variant trains the same profile base model on the same rows for the same number of steps,
one after another in this process, so the ratios compare like with like on whatever machine runs
it. Absolute seconds depend on the machine; the ratios are what the notebooks' claims rest on.
"""

from __future__ import annotations

import argparse
import time

from ftlearn.lora import lora_config
from ftlearn.memory import measure_peak
from ftlearn.models import load
from ftlearn.paths import run_dir
from ftlearn.profiles import get
from ftlearn.training import make_trainer, settings_for
from ftlearn.world import load_split

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
                "examples/s": examples / seconds,
                "peak MB": peak / 1e6,
            }
        )
    return results


def main() -> None:
    """Print a markdown table of the variants, with speed and memory as ratios to full fine-tuning."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", default="tiny")
    args = parser.parse_args()
    results = run(args.profile, args.steps)
    ref = results[0]
    print(
        f"| variant ({args.profile}, {args.steps} steps) | examples/s | speed vs full | peak MB | memory vs full |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['examples/s']:.0f} | {r['examples/s'] / ref['examples/s']:.2f}x "
            f"| {r['peak MB']:.0f} | {r['peak MB'] / ref['peak MB']:.2f}x |"
        )


if __name__ == "__main__":
    main()
