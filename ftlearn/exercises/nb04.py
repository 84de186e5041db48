"""The checks of 04_lora's exercises."""

from __future__ import annotations

import math

import torch

from ftlearn.exercises import close, exercise


@exercise("04.1")
def _adapter_at_scale(answer, model: str, r: int) -> str:
    from ftlearn.estimator import MiB
    from ftlearn.lora import lora_cost
    from ftlearn.shapes import ATTENTION, as_shape

    assert isinstance(answer, tuple) and len(answer) == 2, "give (trainable parameters, MiB)"
    params, mib = answer
    shape = as_shape(model)
    truth = lora_cost(shape, r, 2 * r, "all-linear")
    n = truth["trainable"]
    linear = shape.linear_shapes()
    full_matrices = shape.layers * sum(i * o for i, o in linear.values())
    no_gqa = shape.layers * sum(r * 2 * shape.hidden if t in ("k_proj", "v_proj") else r * (i + o)
                                for t, (i, o) in linear.items())  # fmt: skip
    hints = {
        full_matrices: "that counts every entry of the full matrices (in x out); LoRA trains "
        "r x (in + out) per matrix: A is r x in, B is out x r",
        n // shape.layers: f"that is one decoder layer: multiply by its {shape.layers} layers",
        shape.layers * sum(r * sum(linear[t]) for t in ATTENTION): "that is attention only; "
        "every linear layer includes the MLP's gate_proj, up_proj and down_proj",
        no_gqa: f"k_proj and v_proj are {shape.kv_dim} wide, not {shape.hidden}: grouped-query "
        f"attention ({shape.kv_heads} key/value heads); see shape.linear_shapes()",
    }
    if params in hints and params != n:
        raise AssertionError(hints[params])
    assert params == n, (
        f"{params:,} is not the count: sum r x (in + out) over the 7 linear layers of each of "
        f"the {shape.layers} layers (ftlearn.shapes.lora_params, or the control above)"
    )
    assert isinstance(mib, (int, float)), "the size is a number of MiB"
    if close(mib, 4 * n / 1e6, 1e-3) and not close(mib, truth["adapter_mib"], 1e-3):
        raise AssertionError("that is MB (10^6 bytes); a MiB is 2^20 = 1,048,576 bytes")
    if close(mib, 2 * n / MiB, 1e-3):
        raise AssertionError("that is 2 bytes a value (bf16); peft saves A and B in fp32, 4 bytes")
    assert close(mib, truth["adapter_mib"], 1e-3), (
        f"{mib:g} MiB is not {n:,} fp32 values: 4 bytes each, divided by 2^20"
    )
    return (
        f"{n:,} parameters, {truth['adapter_mib']:.0f} MiB in fp32 ({truth['trainable_percent']:.2f}% "
        f"of {model}): hundreds of times the tiny model's adapter, still a small file beside the "
        f"{shape.n_params * 2 / 2**30:.0f} GiB of bf16 weights."
    )


@exercise("04.2")
def _merge_by_hand(answer, seed: int = 0) -> str:
    assert callable(answer), "give a function merge(W, A, B, alpha, r, rslora=False)"
    g = torch.Generator().manual_seed(seed)
    r, alpha, d_out, d_in = (
        4,
        8.0,
        6,
        10,
    )  # scaling 2 (or 4 under rsLoRA), not 1: a forgotten one shows
    W, A, B = (torch.randn(*s, generator=g) for s in [(d_out, d_in), (r, d_in), (d_out, r)])
    for rslora in (False, True):
        scaling = alpha / (math.sqrt(r) if rslora else r)
        truth = W + scaling * B @ A
        got = answer(W.clone(), A.clone(), B.clone(), alpha, r, rslora=rslora)
        assert isinstance(got, torch.Tensor), "return the merged weight, a tensor"
        assert got.shape == W.shape, (
            f"the merged weight has W's shape {tuple(W.shape)}, not {tuple(got.shape)}: "
            "B (out x r) @ A (r x in)"
        )
        if torch.allclose(got, W + B @ A, atol=1e-5):
            raise AssertionError("the scaling is missing: W + (alpha / r) B A")
        if rslora and torch.allclose(got, W + alpha / r * B @ A, atol=1e-5):
            raise AssertionError("under rsLoRA the scaling is alpha / sqrt(r), not alpha / r")
        assert torch.allclose(got, truth, atol=1e-5), (
            f"{'rsLoRA: ' if rslora else ''}max |yours - (W + s B A)| = "
            f"{(got - truth).abs().max():.3g}, with s = {scaling:g}"
        )
    x = torch.randn(3, d_in, generator=g)
    paths = (x @ W.T + alpha / r * (x @ A.T) @ B.T - x @ answer(W, A, B, alpha, r).T).abs().max()
    return (
        f"One matrix gives what W x + s B (A x) gave (max difference {paths:.1e}, float "
        "rounding): merged, the adapter costs nothing at inference."
    )


@exercise("04.3")
def _alpha_or_learning_rate(
    answer,
    run: dict,
    same_alpha: dict,
    four_alpha: dict,
    r: int,
    alpha: float,
    learning_rate: float,
) -> str:
    assert answer in ("4x alpha", "1x alpha"), (
        'answer "4x alpha" or "1x alpha": which run\'s training loss is yours closer to?'
    )
    assert isinstance(run, dict) and "train_loss" in run, (
        "run: the dict train_and_score (or the notebook's lora_run) returned for your run"
    )
    assert (run.get("lora_r"), run.get("lora_alpha")) == (r, alpha), (
        f"train at the profile's r={r} and alpha={alpha:g}, as the sweep's reference run: yours "
        f"had r={run.get('lora_r')}, alpha={run.get('lora_alpha')}"
    )
    assert close(run["learning_rate"], 4 * learning_rate, 1e-6), (
        f"learning rate {run['learning_rate']:g}: the exercise asks for 4 x {learning_rate:g}"
    )
    mine, low, high = run["train_loss"], same_alpha["train_loss"], four_alpha["train_loss"]
    truth = "4x alpha" if abs(mine - high) < abs(mine - low) else "1x alpha"
    assert answer == truth, (
        f"measured training loss: yours {mine:.3f}; 1x alpha {low:.3f}, 4x alpha {high:.3f}"
    )
    return (
        f"Training loss {mine:.3f} at 4x the rate, {high:.3f} at 4x alpha, {low:.3f} at neither. "
        "Alpha scales the update s B A; the rate scales the steps of A and of B, whose product "
        "moves with both."
    )
