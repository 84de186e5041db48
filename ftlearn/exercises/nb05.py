"""The checks of 05_quantization's exercises."""

from __future__ import annotations

import torch

from ftlearn.exercises import close, exercise


def _as_tensor(answer, what: str) -> torch.Tensor:
    assert isinstance(answer, torch.Tensor), f"the answer is a tensor: {what}"
    return answer.detach().float().reshape(-1)


@exercise("05.1")
def _dequantize_by_hand(answer, packed: torch.Tensor, state) -> str:
    from ftlearn.quantization import nf4_levels

    assert not getattr(state, "nested", False), (
        "pass the state of quantize_4bit(W, blocksize=64, quant_type='nf4') without "
        "compress_statistics: its absmax is then one fp32 value per block"
    )
    mine = _as_tensor(answer, "the 64 dequantized weights of W's first block")
    assert mine.numel() == 64, f"{mine.numel()} values: a block holds 64 weights"
    first = packed.reshape(-1)[:32].view(torch.uint8).long()  # 64 codes, two per byte
    high, low = first >> 4, first & 0xF
    levels, absmax = nf4_levels(), state.absmax[0].float()
    truth = levels[torch.stack([high, low], 1).reshape(-1)] * absmax
    if torch.allclose(mine, levels[torch.stack([low, high], 1).reshape(-1)] * absmax, atol=1e-7):
        raise AssertionError("nibbles swapped: element 0 is the high nibble, packed >> 4")
    if torch.allclose(mine, truth / absmax, atol=1e-7):
        raise AssertionError(
            "those are the levels: multiply by the block's absmax, state.absmax[0]"
        )
    assert torch.allclose(mine, truth, atol=1e-7), (
        "not W's first block: unpack each byte into (byte >> 4, byte & 15), look each code up "
        "in state.code (NF4's 16 levels), multiply by state.absmax[0]"
    )
    return f"Code -> level -> times absmax {absmax.item():.4f}: the values dequantize_4bit returns."


def _nf4_error(linears: dict, blocksize: int) -> float:
    """Mean relative error (%) of NF4 in blocks of `blocksize` over the layers."""
    from ftlearn.quantization import nf4_dequantize, nf4_quantize, quant_error

    errors = [
        quant_error(w, nf4_dequantize(*nf4_quantize(w, blocksize), blocksize))["relative"]
        for w in linears.values()
    ]
    return 100 * sum(errors) / len(errors)


@exercise("05.2")
def _block_size(answer, bits, linears: dict) -> str:
    from ftlearn.quantization import bits_per_param

    assert isinstance(answer, dict) and isinstance(bits, dict), (
        "two dicts, {block size: mean relative error in %} and {block size: bits per weight}"
    )
    assert 64 in answer and any(b > 64 for b in answer), (
        "measure blocks of 64 and at least one larger size"
    )
    assert set(bits) == set(answer), "give the bits per weight for the same block sizes"
    for size, error in answer.items():
        truth = _nf4_error(linears, size)
        if close(error * 100, truth, 1e-3):
            raise AssertionError("in percent, please: 100 x ||W - W_hat|| / ||W||")
        assert close(error, truth, 1e-3), (
            f"blocks of {size}: the mean over `linears` of NF4's relative error is not "
            f"{error:.3f}%: nf4_quantize(w, {size}), nf4_dequantize, quant_error(...)['relative']"
        )
        expected = bits_per_param(size, double_quant=True)
        if close(bits[size], bits_per_param(size), 1e-9):
            raise AssertionError("that is without double quantization, which QLoRA uses")
        assert close(bits[size], expected, 1e-6), (
            f"blocks of {size} with double quantization: 4 + 8/{size} + 32/({size} x 256) bits"
        )
    big = max(answer)
    return (
        f"From 64 to {big}: error {answer[64]:.2f}% -> {answer[big]:.2f}% for "
        f"{bits[64] - bits[big]:.3f} bits a weight less."
    )


@exercise("05.3")
def _output_error(answer, ratio, linears: dict, acts: dict, levels: torch.Tensor) -> str:
    from ftlearn.quantization import codebook_dequantize, codebook_quantize, nf4_levels

    assert isinstance(answer, int), "the answer is a count of layers"
    assert isinstance(ratio, float), "the ratio is one number: Lloyd-Max's output error / NF4's"
    wins, ratios = 0, []
    for name, w in linears.items():
        x = acts[name]
        y = x @ w.T
        err = {}
        for book, lv in (("nf4", nf4_levels()), ("lloyd", levels)):
            w_hat = codebook_dequantize(*codebook_quantize(w, lv), lv)
            err[book] = ((x @ w_hat.T - y).norm() / y.norm()).item()
        wins += err["lloyd"] < err["nf4"]
        ratios.append(err["lloyd"] / err["nf4"])
    mean = sum(ratios) / len(ratios)
    assert answer == wins, (
        f"not {answer} of {len(linears)}: per layer, compare ||X W_hat.T - X W.T|| / ||X W.T|| "
        "with X = acts[name], W_hat from each codebook (blocks of 64)"
    )
    assert close(ratio, mean, 1e-3), (
        f"{ratio:.4f} is not the mean over the layers of (Lloyd-Max's output error / NF4's)"
    )
    return (
        f"Lloyd-Max's lower weight error carries to the outputs in {wins} of {len(linears)} "
        f"layers, {1 - mean:.1%} lower on average."
    )
