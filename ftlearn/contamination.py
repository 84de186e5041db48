"""Contamination (09_evaluation): test questions whose text the model already saw in training.

A test score means "generalises" only if the test questions were not in the training data. The
check the field uses (GPT-3's and the Llama reports' decontamination) is n-gram overlap: a test
item counts as contaminated when enough of its n-grams of words also occur in the training text.
`overlap` measures that per test row; `plant_leak` copies chosen test rows into the training rows
on purpose, to see what a leak does to the score and whether `overlap` finds it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ftlearn.evaluation import normalize

N = 8  # words per n-gram: the GPT-3 paper used 13 on long documents; these rows are short


def row_text(row: dict) -> str:
    """A chat row as the words a model trains on: every message's content, normalized."""
    return normalize(" ".join(m["content"] for m in row["messages"]))


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
    """The set of n-grams of words in a normalized text (the whole text, if it is shorter than n)."""
    words = text.split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlap(train: Sequence[dict], test: Sequence[dict], n: int = N) -> list[float]:
    """Per test row, the share of its n-grams that also occur anywhere in the training rows."""
    seen: set[tuple[str, ...]] = set()
    for row in train:
        seen |= ngrams(row_text(row), n)
    shares = []
    for row in test:
        grams = ngrams(row_text(row), n)
        shares.append(len(grams & seen) / len(grams) if grams else 0.0)
    return shares


def plant_leak(
    train: Sequence[dict], test: Sequence[dict], k: int, seed: int = 0, copies: int = 1
) -> tuple[list[dict], set[str]]:
    """Training rows with `k` test rows mixed in at random places, `copies` times each, and the leaked ids."""
    if not 0 <= k <= len(test):
        raise ValueError(f"cannot leak {k} of {len(test)} test rows: choose 0 to {len(test)}.")
    rng = random.Random(seed)
    leaked = rng.sample(list(test), k)
    rows = list(train)
    for row in leaked * copies:  # a leak is often repeated: a benchmark copied onto many web pages
        rows.insert(rng.randrange(len(rows) + 1), row)
    return rows, {r["id"] for r in leaked}
