"""The checks of 08b_rlhf_grpo's exercises."""

from __future__ import annotations

from ftlearn.exercises import exercise


@exercise("08b.1")
def _batch_advantages(answer, rewards, group_size: int) -> str:
    import torch

    from ftlearn.preference import group_advantages

    assert isinstance(answer, torch.Tensor) and answer.numel() == rewards.numel(), (
        f"the answer is a tensor of {rewards.numel()} advantages, one per answer"
    )
    truth = group_advantages(rewards, group_size, scale="batch")
    mine = answer.flatten().float()
    if torch.allclose(mine, group_advantages(rewards, group_size, scale="group"), atol=1e-3):
        raise AssertionError("those are the group-scaled advantages: divide by the std of all the rewards instead")
    if torch.allclose(mine, rewards - rewards.mean(), atol=1e-3) or torch.allclose(
        mine, (rewards - rewards.mean()) / (rewards.std() + 1e-4), atol=1e-3
    ):
        raise AssertionError("subtract each group's own mean (the baseline is the group), then divide by the batch's std")
    biased = group_advantages(rewards, group_size, scale="none") / (rewards.std(unbiased=False) + 1e-4)
    if torch.allclose(mine, biased, atol=1e-3) and not torch.allclose(mine, truth, atol=1e-3):
        raise AssertionError("close: TRL's std is Bessel-corrected (torch's default, unbiased=True)")
    assert torch.allclose(mine, truth, atol=1e-3), f"{mine.tolist()}, not {[round(t, 3) for t in truth.tolist()]}"
    group = group_advantages(rewards, group_size, scale="group")
    return (f"batch-scaled {[round(t, 2) for t in truth.tolist()]} against group-scaled "
            f"{[round(t, 2) for t in group.tolist()]}: the second group's near-ties no longer count as much as "
            "the first group's clear winner.")  # fmt: skip


@exercise("08b.2")
def _mended_reward(answer, reward, before: dict, rows: list) -> str:
    from ftlearn import stats
    from ftlearn.world import hedged

    hedge = [[{"role": "assistant", "content": hedged("Norton", "yes")}]]
    plain = [[{"role": "assistant", "content": "The town of Norton stands on the river Cress."}]]
    paid = reward(completions=hedge + plain, town=["Norton", "Norton"])
    assert paid is not ... and paid is not None, "my_reward returns `...`: write its body"
    assert len(paid) == 2, "a reward returns one number per completion"
    assert paid[0] <= 0, f"your reward pays {paid[0]} for a hedge that names the town: that is the hack"
    assert paid[1] > 0, "your reward pays nothing for a plain answer that names the town: keep what it meant to pay for"
    assert isinstance(answer, dict) and {"hedge", "correct"} <= set(answer), (
        "my_run: train_on_rewards(...) | measure(...), so that it holds the 'hedge' and 'correct' shares"
    )
    assert len(answer["hedge"]) == len(before["hedge"]) == len(rows), "measure on `rows`, as `before` was"
    change = stats.paired(answer["hedge"], before["hedge"])
    assert change.low <= 0, f"the hedge rate still rises beyond noise: {change}"
    em = stats.paired(answer["correct"], before["correct"])
    return (f"hedge rate {change}; exact match {em}. It still pays for naming the town, so yes/no "
            "answers (which never name it) get nothing: what does the policy learn there?")
