"""09's review of 03-07's claims: recorded hits read back, both tests applied, missing and mismatched runs named."""

from __future__ import annotations

import pytest

from ftlearn import claims, tracking

ROWS = [{"id": i} for i in range(100)]


def record(path, notebook: str, hits: dict, rows=ROWS):
    return tracking.record_hits(notebook, hits, rows, "tiny", path=path)


def test_verdict_needs_both_tests():
    better, worse, tie = [1] * 60 + [0] * 40, [1] * 30 + [0] * 70, [1] * 50 + [0] * 50
    assert claims.verdict(better, worse)[2] == "a better" and claims.verdict(worse, better)[2] == "b better"
    assert claims.verdict(tie, tie)[2] == "no difference shown"
    # 5 questions only a gets right: the bootstrap's interval clears 0 (a resample rarely misses all 5),
    # McNemar's exact p = 2 / 2**5 = 0.0625 does not
    diff, test, said = claims.verdict([1] * 5 + [0] * 95, [0] * 100)
    assert diff.low > 0 and test.p_value == pytest.approx(0.0625) and said == "the two tests disagree"


def test_review_reads_the_recorded_runs(tmp_path):
    path = tmp_path / "results.jsonl"
    record(path, "03", {"before SFT": [0] * 100, "after SFT": [1] * 30 + [0] * 70})
    record(path, "06", {"LoRA": [1] * 50 + [0] * 50, "QLoRA": [1] * 49 + [0] * 51})
    record(path, "06", {"QLoRA": [0] * 100})  # a newer run of the same name replaces the older
    chosen = [c for c in claims.CLAIMS if c.notebook in ("03", "06") and c.b != "lr/10"] + [claims.CLAIMS[2]]
    rows = {r["claim"]: r for r in claims.review("tiny", tracking.read(path), chosen)}
    sft, qlora, lora = rows["SFT teaches the task"], rows["QLoRA answers as well as LoRA"], rows[claims.CLAIMS[2].text]
    assert sft["agrees"] and sft["data say"] == "a better" and sft["a - b"] == 0.3 and sft["questions"] == 100
    assert qlora["data say"] == "b better" and qlora["agrees"] is False, "the newest QLoRA run, 0 of 100"
    assert lora["agrees"] is None and "run 04_lora on tiny first" in lora["data say"]
    assert claims.review("smol", tracking.read(path), chosen[:1])[0]["agrees"] is None, "runs are per profile"


def test_a_claim_on_different_questions_is_refused(tmp_path):
    path = tmp_path / "results.jsonl"
    record(path, "05", {"fp32": [1] * 100})
    record(path, "05", {"fp16": [1] * 100}, rows=ROWS[::-1])
    with pytest.raises(ValueError, match="different questions.*rerun the notebook"):
        claims.review("tiny", tracking.read(path), [c for c in claims.CLAIMS if c.a == "fp16"])


def test_record_hits_wants_one_hit_per_question(tmp_path):
    with pytest.raises(ValueError, match="04 LoRA: 99 hits for 100 questions"):
        record(tmp_path / "r.jsonl", "04", {"LoRA": [1] * 99})


def test_every_claim_names_its_runs():
    assert all(c.notebook in claims.NOTEBOOKS and c.says in claims.SAYS and c.a != c.b for c in claims.CLAIMS)
    assert len({(c.notebook, c.a, c.b) for c in claims.CLAIMS}) == len(claims.CLAIMS)
