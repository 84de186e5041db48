"""11_grounding_vs_finetuning's exercise checks: a right answer passes, each wrong one fails with its hint."""

import pytest
import torch

from ftlearn.exercises import check


def test_11_2_threshold_between_real_and_phantom_scores():
    real, phantom = [5.0, 6.0, 7.0, 8.0] * 5, [1.0, 2.0, 3.0, 6.5]
    check("11.2", 4.0, real=real, phantom=phantom)
    with pytest.raises(AssertionError, match="refuses 25% of real questions"):
        check("11.2", 5.5, real=real, phantom=phantom)
    with pytest.raises(AssertionError, match="50% of phantom questions"):
        check("11.2", 2.5, real=real, phantom=phantom)


def test_11_1_wants_the_embeddings_trained_and_the_recall_it_measures():
    from transformers import AutoTokenizer

    from ftlearn import grounding
    from ftlearn.paths import MODELS_DIR

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    fresh = grounding.new_towns(3, seed=1)
    texts = grounding.passages(grounding.town_documents(fresh, per_town=2))
    rows = grounding.town_rows(fresh)[:10]
    golds = [grounding.gold(r, grounding.towns_by_name(fresh)[r["town"]]) for r in rows]
    torch.manual_seed(0)
    encoder = grounding.Encoder(tok, torch.randn(len(tok), 16), dim=16)
    found, _ = grounding.Dense(encoder, texts).search([grounding.question(r) for r in rows], k=1)
    truth = sum(grounding.recall_at_k(found, golds, 1)) / len(rows)
    check("11.1", truth, encoder=encoder, texts=texts, rows=rows, golds=golds, frozen=0.5)
    with pytest.raises(AssertionError, match="recall@1 of this encoder"):
        check("11.1", truth + 0.1, encoder=encoder, texts=texts, rows=rows, golds=golds, frozen=0.5)
    encoder.bag.weight.requires_grad_(False)
    with pytest.raises(AssertionError, match="still frozen"):
        check("11.1", truth, encoder=encoder, texts=texts, rows=rows, golds=golds, frozen=0.5)
