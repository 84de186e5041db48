"""The spread of a measured comparison: a paired bootstrap over the evaluation questions.

Two runs scored on the same 100 questions differ by a few questions for no reason but which
questions were drawn. Resampling the questions (with replacement, the same draw for both runs)
gives the range a difference moves in by that chance alone; a self-check asserts a claim only
where the whole 95% interval agrees with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 2000  # resamples: the 2.5% and 97.5% quantiles move by under 0.005 between seeds


@dataclass(frozen=True)
class Difference:
    """a - b on the same items, with its bootstrap interval."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    n: int  # items (questions, texts) resampled

    def __str__(self) -> str:
        return f"{self.a:.3f} - {self.b:.3f} = {self.diff:+.3f} (95% interval {self.low:+.3f} to {self.high:+.3f}, {self.n} items)"

    def above(self, margin: float = 0.0) -> bool:
        """The whole interval lies above `margin`: a beats b by more than that, beyond question noise."""
        return self.low > margin

    def within(self, margin: float) -> bool:
        """The whole interval lies within ±margin: a and b agree to that margin."""
        return -margin <= self.low and self.high <= margin


def resamples(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """n_boot rows of n item indices drawn with replacement (seeded: the same on every run)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired(
    a: Sequence[float],
    b: Sequence[float],
    stat: Callable[[np.ndarray], float] | None = None,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Difference:
    """mean(a) - mean(b) over the same items (per-question hits, losses), with its bootstrap interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(
            f"paired needs two equal, non-empty lists of per-item values: {a.shape}, {b.shape}"
        )
    idx = resamples(len(a), n_boot, seed)
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return Difference(
        float(a.mean()), float(b.mean()), float(a.mean() - b.mean()), float(lo), float(hi), len(a)
    )


def ratio_paired(
    num_a: Sequence[float],
    num_b: Sequence[float],
    den: Sequence[float],
    transform: Callable[[np.ndarray], np.ndarray] = np.exp,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Difference:
    """transform(sum a / sum den) - transform(sum b / sum den): perplexities of two models on the same texts.

    num_*: each text's summed next-token loss under model a or b; den: its number of predicted tokens.
    """
    na, nb, d = (np.asarray(x, dtype=float) for x in (num_a, num_b, den))
    idx = resamples(len(d), n_boot, seed)
    va = transform(na[idx].sum(axis=1) / d[idx].sum(axis=1))
    vb = transform(nb[idx].sum(axis=1) / d[idx].sum(axis=1))
    lo, hi = np.quantile(va - vb, [(1 - level) / 2, (1 + level) / 2])
    a, b = float(transform(na.sum() / d.sum())), float(transform(nb.sum() / d.sum()))
    return Difference(a, b, a - b, float(lo), float(hi), len(d))


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} (95% interval {self.low:.3f} to {self.high:.3f}, {self.n} items)"


def interval(values: Sequence[float], level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """mean(values) with its percentile bootstrap interval: exact match on 340 questions is 0.91 ± what?"""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"interval needs a non-empty list of per-item values, got shape {v.shape}")
    means = v[resamples(len(v), n_boot, seed)].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(v.mean()), float(lo), float(hi), len(v))


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired right/wrong: only the questions the two models disagree on count."""

    only_a: int  # questions a gets right and b wrong
    only_b: int
    p_value: float  # two-sided, exact (binomial with p = 1/2 over the discordant questions)

    def __str__(self) -> str:
        return f"only a right: {self.only_a}, only b right: {self.only_b}, exact two-sided p = {self.p_value:.3g}"


def mcnemar(a: Sequence[int], b: Sequence[int]) -> McNemar:
    """McNemar's exact test between two models' per-question hits (0/1) on the same questions."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    if a.shape != b.shape or not set(np.unique(np.concatenate([a, b]))) <= {0, 1}:
        raise ValueError("mcnemar needs two equal-length lists of 0/1 hits on the same questions")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return McNemar(only_a, only_b, min(1.0, 2 * tail))


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's kappa: agreement between two raters beyond what their label rates give by chance."""
    if len(a) != len(b) or not a:
        raise ValueError(f"cohen_kappa needs two equal, non-empty lists of labels: {len(a)}, {len(b)}")
    labels = sorted(set(a) | set(b), key=str)
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    chance = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in labels)
    return 1.0 if chance == 1 else (observed - chance) / (1 - chance)
