"""The hand-written sampler of 01 equals transformers' logits processors, knob by knob."""

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ftlearn.decoding import next_token_distribution

CASES = [
    dict(temperature=0.7),
    dict(temperature=1.5),
    dict(top_k=5),
    dict(top_p=0.9),
    dict(top_p=0.5, temperature=0.8),
    dict(repetition_penalty=1.3),
    dict(repetition_penalty=1.3, temperature=0.7, top_k=20, top_p=0.9),
]


def library(logits, previous, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0):
    """The same knobs through transformers, in the order `generate` builds them."""
    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return procs(previous, logits.clone()).softmax(-1)


@pytest.mark.parametrize("knobs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_hand_sampler_equals_transformers(knobs):
    torch.manual_seed(0)
    logits, previous = torch.randn(4, 300) * 3, torch.randint(0, 300, (4, 12))
    ours = next_token_distribution(logits, previous, **knobs)
    assert torch.allclose(ours, library(logits, previous, **knobs), atol=1e-6)


def test_the_knobs_do_something():
    torch.manual_seed(1)
    logits = torch.randn(2, 100) * 2
    plain = next_token_distribution(logits)
    assert (next_token_distribution(logits, top_k=5) > 0).sum(-1).eq(5).all()
    sharp, flat = (next_token_distribution(logits, temperature=t) for t in (0.5, 2.0))
    entropy = lambda p: -(p * p.clamp_min(1e-12).log()).sum(-1)  # noqa: E731
    assert (entropy(sharp) < entropy(plain)).all() and (entropy(flat) > entropy(plain)).all()
    kept = (next_token_distribution(logits, top_p=0.8) > 0).sum(-1)
    assert (kept < 100).all() and (kept >= 1).all()
