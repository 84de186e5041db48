"""How fast is this machine right now? One fixed LoRA run, timed: run it before and after timing notebooks.

The same run every time (tiny-base, 04_lora's reference LoRA, 20 steps of 16 short answers, then
exact match on 100 test questions), so that notebook timings taken at different hours can be put
on one scale. Measured on a 2-core VM, 2026-12-01: 10.1 s in a quiet period, 18.7-21.3 s an hour
later with nothing else running (the VM's speed moves; it reports no steal time).

    python benchmarks/speed_probe.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def probe(repeats: int = 2) -> list[float]:
    """Wall seconds of the reference run, `repeats` times."""
    from ftlearn import plan, profiles
    from ftlearn.experiments import train_and_score
    from ftlearn.models import load
    from ftlearn.paths import run_dir
    from ftlearn.world import load_split

    profile = profiles.get("tiny")
    _, tok = load(profile, "base")
    train, test = ([r for r in load_split(f"instructions_{s}") if r["task"] == "short_answer"] for s in ("train", "test"))
    sized = replace(plan.run(profile, "04_lora/lora"), batch_size=16, max_steps=20)  # fixed: 04 moved to 8
    seconds = []
    for _ in range(repeats):
        model, _ = load(profile, "base", method="lora")
        settings = sized.settings(profile, str(run_dir("benchmarks/speed-probe", fresh=True)),
                                  learning_rate=profile.lora_learning_rate, seed=0, logging_steps=5)  # fmt: skip
        start = time.time()
        out = train_and_score(model, tok, train, test[:100], settings, sized.lora_config(profile))
        seconds.append(time.time() - start)
        print(f"reference LoRA run: {seconds[-1]:.1f} s, {out['step_ms']:.0f} ms a step, exact match {out['exact_match']:.2f}")
    return seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    probe(parser.parse_args().repeats)
