"""The checks of 08_preference_tuning's exercises."""

from __future__ import annotations

from ftlearn.exercises import exercise


@exercise("08.1")
def _implicit_reward(answer, policy, reference, tokenizer, prompt, text: str, beta: float) -> str:
    from ftlearn.preference import answer_logps

    ratio = float(answer_logps(policy, tokenizer, [prompt], [text]) - answer_logps(reference, tokenizer, [prompt], [text]))
    truth = beta * ratio
    assert isinstance(answer, float), "the answer is one float: beta * (log pi - log pi_ref)"
    if abs(ratio) > 1e-3 and abs(answer - ratio) < 1e-4 * max(1.0, abs(ratio)):
        raise AssertionError("close: that is the log-ratio; DPO's reward multiplies it by beta")
    assert abs(answer - truth) < 1e-4 * max(1.0, abs(truth)), (
        f"{answer:.4f}, not {truth:.4f}: sum the answer's token log-probabilities under each model "
        "(answer_logps), subtract the reference's, times beta"
    )
    return f"the implicit reward of the atlas answer is {truth:+.3f}: the policy makes it more likely than the reference does."


@exercise("08.2")
def _fool_the_reward_model(answer, reward_model, tokenizer, prompt, reference: str) -> str:
    from ftlearn.evaluation import normalize
    from ftlearn.preference import reward_scores

    assert isinstance(answer, str) and answer.strip(), "the answer is a non-empty string"
    assert normalize(answer) != normalize(reference), f"{answer!r} is the atlas's answer: it must be wrong"
    yours, theirs = reward_scores(reward_model, tokenizer, [prompt, prompt], [answer, reference]).tolist()
    assert yours > theirs, (
        f"the reward model scores yours {yours:+.2f}, the atlas's {theirs:+.2f}: it learned that short "
        "answers win; try a wrong fact, shorter still"
    )
    return f"a wrong answer scores {yours:+.2f} against the truth's {theirs:+.2f}: a policy optimising this reward would learn it."


@exercise("08.3")
def _facts_by_preference(answer, run: dict, before: dict, rows: list) -> str:
    from ftlearn import stats

    assert answer in ("yes", "no"), 'answer "yes" or "no": does exact match rise beyond the noise?'
    assert isinstance(run, dict) and {"correct", "policy"} <= set(run), (
        "my_run: train_on_pairs(...) | measured(...), so that it holds the policy and its 'correct'"
    )
    assert len(run["correct"]) == len(before["correct"]) == len(rows), "measure on `rows`, as `before` was"
    change = stats.paired(run["correct"], before["correct"])
    truth = "yes" if change.above(0) else "no"
    assert answer == truth, f"measured: exact match {change}"
    hedges = f"{sum(before['hedge']) / len(rows):.0%} -> {sum(run['hedge']) / len(rows):.0%}" if "hedge" in run else "?"
    return (f"exact match {change}; hedge rate {hedges}. Where exact match rises, look at which answers "
            "changed: fewer hedges, or new facts? The pairs name training towns' facts only.")
