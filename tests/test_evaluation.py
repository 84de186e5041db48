"""Exact match normalisation: documented, and strict where it must be."""

import pytest

from ftlearn.evaluation import exact_match, normalize, side_by_side


def test_normalize_case_punctuation_space():
    assert normalize("  Amber. ") == normalize("amber") == "amber"
    assert normalize("Yes!") == "yes"
    assert normalize("badger,  December, pottery") == normalize("Badger, December, Pottery.")


def test_normalize_keeps_content_differences():
    assert normalize("Amber river") != normalize("Amber")
    assert normalize("No") != normalize("Yes")


def test_json_key_order_does_not_matter_but_values_do():
    a = '{"town": "Varnholt", "river": "Amber"}'
    b = '{"river": "Amber",   "town": "Varnholt"}'
    c = '{"town": "Varnholt", "river": "Silver"}'
    assert normalize(a) == normalize(b)
    assert normalize(a) != normalize(c)


def test_exact_match_score():
    assert exact_match(["Amber", "no", "x"], ["amber.", "No", "y"]) == 2 / 3
    assert exact_match([], []) == 0.0


def test_side_by_side_has_a_column_per_model():
    table = side_by_side(["q1", "q2"], {"base": ["a", "b"], "instruct": ["c", "d"]}, width=10)
    assert table.splitlines()[0].split("|")[1].strip() == "base"
    assert len(table.splitlines()) == 4


def test_answer_perplexity_scores_only_the_answer_and_ignores_padding():
    import math

    import torch

    from ftlearn.evaluation import answer_perplexity
    from ftlearn.models import load
    from ftlearn.profiles import get
    from ftlearn.world import load_split

    model, tok = load(get("tiny"), "instruct")
    rows = load_split("instructions_test")[:6]
    # by hand, one row at a time (no padding): the loss on the tokens after the prompt
    total, count = 0.0, 0
    for row in rows:
        prompt = tok.apply_chat_template(
            row["messages"][:-1], add_generation_prompt=True, return_dict=False
        )
        chat = tok.apply_chat_template(row["messages"], return_dict=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([chat])).logits[0, :-1]
        losses = torch.nn.functional.cross_entropy(logits, torch.tensor(chat[1:]), reduction="none")
        total += losses[len(prompt) - 1 :].sum().item()
        count += len(chat) - len(prompt)
    expected = math.exp(total / count)
    assert answer_perplexity(model, tok, rows, batch_size=1) == pytest.approx(expected, rel=1e-5)
    assert answer_perplexity(model, tok, rows, batch_size=6) == pytest.approx(expected, rel=1e-4)
    wrong = [
        dict(r, messages=[*r["messages"][:-1], {"role": "assistant", "content": "Zebra"}])
        for r in rows
    ]
    assert answer_perplexity(model, tok, wrong) > 2 * expected  # wrong answers surprise it


def test_hits_are_per_question_exact_match():
    from ftlearn.evaluation import exact_match, hits

    preds, refs = ["Amber.", "Yes", "no"], ["amber", "yes", "yes"]
    assert hits(preds, refs) == [1, 1, 0]
    assert exact_match(preds, refs) == sum(hits(preds, refs)) / 3
