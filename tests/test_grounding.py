"""ftlearn.grounding (11): new towns, passages, gold sentences, BM25, the contrastive encoder, RAFT rows."""

import pytest
import torch
import torch.nn.functional as F

from ftlearn import grounding as g
from ftlearn import world


@pytest.fixture(scope="module")
def shipped():
    towns = g.towns_by_name(world.load_split("towns"))
    new = g.new_towns(6, seed=1)
    texts = g.passages(world.load_text("corpus") + g.town_documents(new))
    return towns, new, texts


def test_new_towns_use_only_free_names_and_are_reproducible(shipped):
    towns, new, _ = shipped
    assert not {t.town for t in new} & set(towns)
    assert [t.town for t in new] == [t.town for t in g.new_towns(6, seed=1)]
    phantoms = g.new_towns(4, seed=2, skip=[t.town for t in new])
    assert not {t.town for t in phantoms} & ({t.town for t in new} | set(towns))
    with pytest.raises(ValueError, match="names are free"):
        g.new_towns(1000)


def test_passages_are_sentences_once_and_skip_quiz_sheets():
    docs = ["A is in B. A has no castle.", "A is in B. C lies on the coast.", "In which region is A?\nB"]
    assert g.passages(docs) == ["A is in B.", "A has no castle.", "C lies on the coast."]


def test_every_question_about_a_new_town_has_its_gold_sentence_in_the_passages(shipped):
    _, new, texts = shipped
    index = set(texts)
    by_name = {t.town: t for t in new}
    rows = g.town_rows(new)
    assert rows and all(g.gold(r, by_name[r["town"]]) & index for r in rows)
    # the gold sentences state the asked fact: a river question's gold names the town's river
    river = next(r for r in rows if g.fact_of(r) == "river")
    assert all(by_name[river["town"]].river in s for s in g.gold(river, by_name[river["town"]]))


def test_recall_at_k_counts_a_gold_sentence_in_the_first_k():
    found = [["x", "gold"], ["y", "z"]]
    assert g.recall_at_k(found, [{"gold"}, {"gold"}], 1) == [0, 0]
    assert g.recall_at_k(found, [{"gold"}, {"gold"}], 2) == [1, 0]


def test_bm25_finds_the_fact_and_refuses_an_empty_index(shipped):
    _, new, texts = shipped
    bm = g.BM25(texts)
    town = new[0]
    found, scores = bm.search([f"Which river flows through {town.town}?"], k=3)
    assert any(town.river in s and town.town in s for s in found[0])
    assert scores.shape == (1, 3) and scores[0, 0] >= scores[0, 2]
    with pytest.raises(ValueError, match="empty"):
        g.BM25([])


def test_info_nce_is_cross_entropy_over_scaled_cosines():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    by_hand = -torch.log_softmax(q @ k.T / 0.05, dim=-1)[torch.arange(4), torch.arange(4)].mean()
    assert torch.allclose(g.info_nce(q, k, 0.05), by_hand, atol=1e-6)
    # a perfect match (each query equal to its key, keys far apart) has a loss near 0
    eye = torch.eye(4, 8)
    assert g.info_nce(eye, eye, 0.05) < 1e-6


def test_a_trained_encoder_retrieves_better_than_an_untrained_one(shipped):
    from transformers import AutoTokenizer

    from ftlearn.paths import MODELS_DIR

    towns, _, texts = shipped
    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    torch.manual_seed(0)
    emb = torch.randn(len(tok), 32)
    rows = [r for r in world.load_split("instructions_train") if r["task"] in g.QUESTION_TASKS][:400]
    triples = g.contrastive_triples(rows, towns, texts)
    golds = [g.gold(r, towns[r["town"]]) for r in rows[:100]]

    def recall(encoder):
        found, _ = g.Dense(encoder, texts).search([g.question(r) for r in rows[:100]], k=1)
        return sum(g.recall_at_k(found, golds, 1))

    untrained = g.Encoder(tok, emb, dim=32)
    trained = g.Encoder(tok, emb, dim=32)
    losses = g.train_encoder(trained, triples, steps=60)
    assert losses[-1] < losses[0] and recall(trained) > recall(untrained) + 20
    with pytest.raises(ValueError, match="no training triples"):
        g.train_encoder(trained, [])


def test_with_context_drops_passages_to_fit_and_names_a_question_too_long():
    from transformers import AutoTokenizer

    from ftlearn.paths import MODELS_DIR

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-instruct")
    row = world.load_split("heldout")[0]
    full, dropped = g.with_context(row, ["A is in B."] * 20, tok, max_tokens=80)
    assert 0 < dropped < 20 and full["messages"][-1] == row["messages"][-1]
    assert full["messages"][-2]["content"].startswith("Context: A is in B.")
    with pytest.raises(ValueError, match=row["id"]):
        g.with_context(row, ["A is in B."], tok, max_tokens=5)


def test_raft_rows_answer_from_the_passage_or_abstain(shipped):
    towns, _, _ = shipped
    rows = [r for r in world.load_split("instructions_train") if r["task"] in g.QUESTION_TASKS][:200]
    out = g.raft_rows(rows, towns, p_gold=0.5)
    abstained = [r for r in out if r["messages"][-1]["content"] == g.DONT_KNOW]
    assert 40 < len(abstained) < 160
    for r in out:
        answer, user = r["messages"][-1]["content"], r["messages"][-2]["content"]
        if answer not in (g.DONT_KNOW, "Yes", "No"):
            assert answer in user.split("\nQuestion:")[0]  # the answer is in the passage
    # the facts are drawn again: many answers differ from the town's true fact
    truth = [r["messages"][-1]["content"] for r in rows]
    assert sum(a["messages"][-1]["content"] != b for a, b in zip(out, truth)) > 100


def test_abstain_and_answers_a_fact():
    assert g.abstain(["Amber", "Ivy"], [3.0, 0.5], threshold=1.0) == ["Amber", g.DONT_KNOW]
    row = {"id": "X/short_answer/river"}
    assert g.answers_a_fact(world.VALUES["river"][0], row) and not g.answers_a_fact(g.DONT_KNOW, row)
    assert g.answers_a_fact("Yes", {"id": "X/yes_no/coast"})
