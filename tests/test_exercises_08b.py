"""08b_rlhf_grpo's exercise checks: a right answer passes, each wrong one fails with its hint."""

import pytest
import torch

from ftlearn.exercises import check
from ftlearn.preference import group_advantages, names_the_town
from ftlearn.world import is_hedge

REWARDS = torch.tensor([1.2, 0.2, 0.2, 0.0, 0.2, 0.2, 0.2, 0.0])


def test_batch_scaled_advantages():
    groups = REWARDS.view(-1, 4)
    check("08b.1", (groups - groups.mean(dim=1, keepdim=True)).flatten() / (REWARDS.std() + 1e-4), rewards=REWARDS, group_size=4)
    with pytest.raises(AssertionError, match="group-scaled"):
        check("08b.1", group_advantages(REWARDS, 4, "group"), rewards=REWARDS, group_size=4)
    with pytest.raises(AssertionError, match="each group's own mean"):
        check("08b.1", (REWARDS - REWARDS.mean()) / REWARDS.std(), rewards=REWARDS, group_size=4)
    with pytest.raises(AssertionError, match="Bessel"):
        biased = group_advantages(REWARDS, 4, "none") / REWARDS.std(unbiased=False)
        check("08b.1", biased, rewards=REWARDS, group_size=4)
    with pytest.raises(AssertionError, match="tensor of 8"):
        check("08b.1", REWARDS[:4], rewards=REWARDS, group_size=4)


def mended(completions, town, **_):
    return [n * (not is_hedge(c[-1]["content"])) for n, c in zip(names_the_town(completions, town), completions)]


def run(hedge: list[float]) -> dict:
    return {"hedge": hedge, "correct": [0.5] * len(hedge)}


def test_a_mended_reward_and_a_run_whose_hedges_do_not_rise():
    before, rows = run([0.25] * 24 + [0.5] * 24), list(range(48))
    check("08b.2", run([0.0] * 48), reward=mended, before=before, rows=rows)
    with pytest.raises(AssertionError, match="that is the hack"):
        check("08b.2", run([0.0] * 48), reward=names_the_town, before=before, rows=rows)
    with pytest.raises(AssertionError, match="pays nothing for a plain answer"):
        check("08b.2", run([0.0] * 48), reward=lambda completions, town, **_: [0.0] * len(completions), before=before, rows=rows)
    with pytest.raises(AssertionError, match="write its body"):
        check("08b.2", run([0.0] * 48), reward=lambda completions, town, **_: ..., before=before, rows=rows)
    with pytest.raises(AssertionError, match="still rises beyond noise"):
        check("08b.2", run([1.0] * 48), reward=mended, before=before, rows=rows)
    with pytest.raises(AssertionError, match="measure on `rows`"):
        check("08b.2", run([0.0] * 8), reward=mended, before=before, rows=rows)
