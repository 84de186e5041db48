"""The checks of 03_sft's exercises."""

from __future__ import annotations

from ftlearn.exercises import exercise


@exercise("03.1")
def _best_checkpoint(answer, curve, steps_per_epoch: int) -> str:
    assert isinstance(answer, tuple) and len(answer) == 2, (
        "give (step, epoch) of the best checkpoint"
    )
    best = curve.loc[curve["eval_loss"].idxmin()]
    step, epoch = int(best["step"]), best["step"] / steps_per_epoch
    assert answer[0] == step, (
        f"step {answer[0]} is not where validation loss was lowest: look at curve['eval_loss']"
    )
    assert abs(answer[1] - epoch) < 1e-6, (
        f"step {step} is epoch {epoch:g}: steps per epoch = examples / batch = {steps_per_epoch}"
    )
    return f"Best at step {step}, epoch {epoch:g}; every later epoch only memorised."


@exercise("03.2")
def _shorter_run(answer, short: float, long: float) -> str:
    assert answer in ("more", "less"), 'answer "more" or "less": half the steps forgets ...'
    truth = "less" if short < long else "more"
    assert answer == truth, (
        f"measured: general perplexity {short:.3f} after the short run, {long:.3f} after the full one"
    )
    return f"General perplexity {short:.3f} (half the steps) vs {long:.3f}: forgetting grows with the steps taken."


@exercise("03.3")
def _never_stops(answer, broken: float, reference: float) -> str:
    assert isinstance(answer, (int, float)) and 0 <= answer <= 1, "a share, between 0 and 1"
    assert abs(answer - broken) < 1e-9, "give the stop rate you measured for the broken model"
    assert broken < reference - 0.5, (
        f"the model trained without <|im_end|> stops {broken:.0%} of the time, the reference "
        f"{reference:.0%}: train it on the broken template (check_template should flag it)"
    )
    return (
        f"Stops {broken:.0%} of the time against {reference:.0%}: it never saw where a turn ends."
    )
