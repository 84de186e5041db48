"""lm-evaluation-harness on the course's test split (ftlearn.harness): its numbers against ftlearn's."""

from __future__ import annotations

import pytest

from ftlearn import harness, metrics
from ftlearn.evaluation import evaluate_exact_match
from ftlearn.models import load
from ftlearn.profiles import get
from ftlearn.world import load_split


@pytest.fixture(scope="module")
def instruct():
    return load(get("tiny"), "instruct")


def test_ftlearn_task_equals_ftlearn_per_question(instruct, tmp_path):
    model, tok = instruct
    rows = load_split("instructions_test")[:24]
    name = harness.write_task(rows, tmp_path, "ftlearn", tokenizer=tok)
    out = harness.run(model, tok, tmp_path, name)
    ours = evaluate_exact_match(model, tok, rows)
    assert [out["by_id"][r["id"]]["hit"] for r in rows] == ours["hits"]
    assert [out["by_id"][r["id"]]["response"].strip() for r in rows] == ours["predictions"]


def test_choice_task_equals_choice_logprobs(instruct, tmp_path):
    model, tok = instruct
    rows = metrics.choice_rows(load_split("instructions_test"), load_split("towns"))[:16]
    name = harness.write_task(rows, tmp_path, "choice", tokenizer=tok)
    out = harness.run(model, tok, tmp_path, name)
    assert [out["by_id"][r["id"]]["hit"] for r in rows] == metrics.choice_hits(metrics.choice_logprobs(model, tok, rows), rows)


def test_chat_task_runs_and_bad_tasks_are_refused(instruct, tmp_path):
    model, tok = instruct
    rows = load_split("instructions_test")[:8]
    out = harness.run(model, tok, tmp_path, harness.write_task(rows, tmp_path, "chat"))
    assert set(out["by_id"]) == {r["id"] for r in rows} and 0 <= out["score"] <= 1
    with pytest.raises(ValueError, match="one of chat"):
        harness.write_task(rows, tmp_path, "loglik")
    with pytest.raises(ValueError, match="pass tokenizer"):
        harness.write_task(rows, tmp_path, "ftlearn")
    with pytest.raises(ValueError, match=r"row 0 \(.*\) has no choices, gold.*choice_rows"):
        harness.write_task(rows[:2], tmp_path, "choice", tokenizer=tok)
    no_template = load(get("tiny"), "base")[1]
    no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        harness.write_task(rows, tmp_path, "ftlearn", tokenizer=no_template)
