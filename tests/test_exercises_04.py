"""04_lora's exercise checks: a right answer passes, each typical wrong one fails with its hint."""

import math

import pytest

from ftlearn.estimator import MiB
from ftlearn.exercises import check
from ftlearn.shapes import MODELS, lora_params

MODEL, R = "Llama-3.1-8B", 16


def test_04_1_adapter_at_scale():
    n = lora_params(MODELS[MODEL], R, "all-linear")
    check("04.1", (n, 4 * n / MiB), model=MODEL, r=R)
    shape = MODELS[MODEL]
    widths = [2 * shape.hidden if t in ("k_proj", "v_proj") else i + o
              for t, (i, o) in shape.linear_shapes().items()]  # fmt: skip
    no_gqa = shape.layers * R * sum(widths)  # k and v as wide as q: no grouped-query attention
    wrong = {
        "in x out": shape.linear_params,
        "one decoder layer": n // shape.layers,
        "attention only": lora_params(shape, R, "attention"),
        "grouped-query": no_gqa,
        "not the count": n + 1,
    }
    for hint, params in wrong.items():
        with pytest.raises(AssertionError, match=hint):
            check("04.1", (params, 4 * params / MiB), model=MODEL, r=R)
    for hint, mib in {"MB": 4 * n / 1e6, "bf16": 2 * n / MiB, "divided by 2": 8 * n / MiB}.items():
        with pytest.raises(AssertionError, match=hint):
            check("04.1", (n, mib), model=MODEL, r=R)
    with pytest.raises(AssertionError, match="give"):
        check("04.1", n, model=MODEL, r=R)


def right_merge(W, A, B, alpha, r, rslora=False):
    return W + alpha / (math.sqrt(r) if rslora else r) * B @ A


def test_04_2_merge_by_hand():
    check("04.2", right_merge)
    wrong = {
        "scaling is missing": lambda W, A, B, alpha, r, rslora=False: W + B @ A,
        "sqrt": lambda W, A, B, alpha, r, rslora=False: W + alpha / r * B @ A,
        "shape": lambda W, A, B, alpha, r, rslora=False: A.T @ B.T,
        "a tensor": lambda W, A, B, alpha, r, rslora=False: None,
        "max": lambda W, A, B, alpha, r, rslora=False: right_merge(W, A, B, alpha, r, rslora) + 0.1,
    }
    for hint, fn in wrong.items():
        with pytest.raises(AssertionError, match=hint):
            check("04.2", fn)
    with pytest.raises(AssertionError, match="function"):
        check("04.2", 3)


def test_04_3_alpha_or_learning_rate():
    def run(loss, r=8, alpha=16, lr=1.2e-2):
        return {"train_loss": loss, "lora_r": r, "lora_alpha": alpha, "learning_rate": lr}

    context = dict(same_alpha={"train_loss": 2.6}, four_alpha={"train_loss": 2.3}, r=8, alpha=16,
                   learning_rate=3e-3)  # fmt: skip
    check("04.3", "4x alpha", run=run(2.2), **context)
    check("04.3", "1x alpha", run=run(2.55), **context)
    with pytest.raises(AssertionError, match="measured training loss: yours 2.200"):
        check("04.3", "1x alpha", run=run(2.2), **context)
    with pytest.raises(AssertionError, match="4 x 0.003"):
        check("04.3", "4x alpha", run=run(2.2, lr=3e-3), **context)
    with pytest.raises(AssertionError, match="alpha=16"):
        check("04.3", "4x alpha", run=run(2.2, alpha=64), **context)
    with pytest.raises(AssertionError, match='"4x alpha" or "1x alpha"'):
        check("04.3", "alpha", run=run(2.2), **context)
