"""08b's package side (ftlearn.preference): the rewards, GRPO runs, the reward model and the
comparison rows that 08 saves for 08b."""

import pytest
import torch

from ftlearn import profiles
from ftlearn.preference import (
    exact_match_reward,
    format_reward,
    load_rows,
    measure,
    names_the_town,
    prompt_rows,
    save_rows,
    start_model,
    train_on_rewards,
    train_reward_model,
    value_head,
)
from ftlearn.world import hedged, load_split

TINY = profiles.get("tiny")


def turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_prompt_rows_keep_the_prompt_turns_and_what_rewards_check():
    rows = load_split("instructions_train")[:3]
    out = prompt_rows(rows)
    for row, p in zip(rows, out, strict=True):
        assert p["prompt"] == row["messages"][:-1] and p["prompt"][-1]["role"] == "user"
        assert p["reference"] == row["messages"][-1]["content"] and p["town"] == row["town"]


def test_exact_match_is_checked_after_normalize_on_chat_and_text_completions():
    refs = ["The town of Norton stands on the river Cress.", "Yes", "Yes"]
    done = [turn("the town of Norton stands on the river cress"), turn("Yes!"), turn("No")]
    assert exact_match_reward(done, refs) == [1.0, 1.0, 0.0]
    assert exact_match_reward(["Yes.", "maybe"], ["yes", "yes"]) == [1.0, 0.0]


def test_format_pays_for_one_short_line_and_never_for_a_hedge():
    answers = ["Cress", "Yes", hedged("Norton", "yes"), "one two three four five six seven eight nine ten eleven twelve thirteen",
               "Cress\nand more", ""]
    assert format_reward([turn(a) for a in answers]) == [0.2, 0.2, 0.0, 0.0, 0.0, 0.0]


def test_naming_the_town_is_won_by_the_hedge_that_is_why_it_is_gamed():
    answers = [hedged("Norton", "yes"), "Yes", "The town of Norton stands on the river Cress.", "Yes"]
    assert names_the_town([turn(a) for a in answers], ["Norton", "Norton", "Norton", ""]) == [1.0, 0.0, 1.0, 0.0]


def test_value_head_is_quiet_and_knows_the_pad_token(capfd):
    model = value_head(TINY)
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err and "/" not in out, "transformers' report (with its absolute path) is silenced"
    assert "value head: score (1, 256)" in out
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None


def test_the_reward_model_trains_and_scores_pairs():
    model, trainer = train_reward_model(TINY, start_model(TINY)[1], load_split("preferences"), 2, 4, "/tmp/ftlearn-rm-test")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and losses and all(torch.isfinite(torch.tensor(losses)))


def test_a_grpo_run_holds_its_reference_and_moves_the_policy(tmp_path):
    prompts = prompt_rows(load_split("instructions_train")[:8])
    start = start_model(TINY)[0]
    run = train_on_rewards(TINY, [exact_match_reward, format_reward], prompts, 2, 2, str(tmp_path))
    assert run["trainer"].state.global_step == 2 and run["reference"] is not None, "beta 0.04: TRL keeps a reference"
    steps = [h for h in run["history"] if "reward" in h]
    assert len(steps) == 2 and {"kl", "rewards/exact_match_reward/mean", "rewards/format_reward/mean"} <= set(steps[0])
    moved = any(not torch.equal(a, b) for a, b in zip(run["policy"].parameters(), start.parameters(), strict=True))
    assert moved, "the policy trained"
    weights = sum(p.numel() * 4 for p in start.parameters()) * 2 / 2**20  # policy + reference, fp32
    assert run["peak MiB"] > weights and run["seconds"] > 0
    after = measure(run["policy"], start, start_model(TINY)[1], load_split("instructions_test")[:4], n=2)
    assert len(after["kl"]) == 4 and {"hedge", "correct", "hedge rate", "exact match"} <= set(after)


def test_a_reward_model_is_a_reward_function(tmp_path):
    rm = value_head(TINY)
    run = train_on_rewards(TINY, rm, prompt_rows(load_split("instructions_train")[:4]), 1, 2, str(tmp_path), beta=0.0)
    assert run["reference"] is None, "beta 0: no reference model"
    assert [h for h in run["history"] if "reward" in h]


def test_rows_are_shown_only_beside_the_samples_they_were_measured_on(tmp_path):
    before = {"hedge": [0.25, 0.5], "correct": [0.75, 0.0], "answers": [["a"], ["b"]]}
    rows = [{"model": "DPO", "hedge rate": "2%"}]
    path = tmp_path / "comparison.json"
    said = []
    assert load_rows(str(path), before, log=said.append) == [] and "run 08_preference_tuning first" in said[-1]
    save_rows(str(path), rows, before)
    assert load_rows(str(path), before) == rows
    other = {**before, "hedge": [0.25, 0.25]}
    assert load_rows(str(path), other, log=said.append) == [] and "other samples" in said[-1]


def test_a_verifiable_reward_needs_its_reference_column():
    with pytest.raises(TypeError, match="reference"):
        exact_match_reward([turn("x")])
