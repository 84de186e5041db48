"""The checks of 11_grounding_vs_finetuning's exercises."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftlearn.exercises import exercise


@exercise("11.1")
def _embeddings_trained_too(answer, encoder, texts: Sequence[str], rows: Sequence[dict], golds: Sequence[set], frozen: float) -> str:
    from ftlearn import grounding

    assert encoder.bag.weight.requires_grad, ("the embeddings are still frozen: build a new Encoder and train it "
                                              "without encoder.bag.weight.requires_grad_(False)")
    found, _ = grounding.Dense(encoder, texts).search([grounding.question(r) for r in rows], k=1)
    truth = sum(grounding.recall_at_k(found, golds, 1)) / len(rows)
    assert isinstance(answer, float | int) and 0 <= answer <= 1, "my_recall: recall@1 on the new towns, between 0 and 1"
    assert abs(answer - truth) < 1e-9, (f"my_recall = {answer}: recall@1 of this encoder on the new towns' questions is "
                                        f"{truth:.3f} (grounding.recall_at_k on Dense(encoder, texts).search(..., k=1))")
    verdict = "below" if truth < frozen else "not below"
    return (f"recall@1 {truth:.2f} with the embeddings trained, {verdict} {frozen:.2f} with them frozen. Trained on "
            "training towns' questions, the embeddings of their names move; the new towns' names were never in a "
            "batch, so training the embeddings fits the training towns and generalises less to unseen entities.")


@exercise("11.2")
def _threshold(answer, real: Sequence[float], phantom: Sequence[float]) -> str:
    real, phantom = np.asarray(real, dtype=float), np.asarray(phantom, dtype=float)
    assert isinstance(answer, float | int), "my_threshold: one number, on BM25's score scale"
    refused, answered = float((real < answer).mean()), float((phantom >= answer).mean())
    assert refused <= 0.10, (f"my_threshold = {answer}: it refuses {refused:.0%} of real questions; at most 10% "
                             f"(their top scores: 10th percentile {np.quantile(real, 0.1):.2f})")
    assert answered <= 0.25, (f"my_threshold = {answer}: {answered:.0%} of phantom questions still get an answer; "
                              f"at most 25% (phantom top scores: median {np.median(phantom):.2f})")
    return (f"refuses {refused:.0%} of real questions and answers {answered:.0%} of phantom ones. The scores overlap "
            "little because a town's name is the rarest word of its question: without it, nothing scores high.")
