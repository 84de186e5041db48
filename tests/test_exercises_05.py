"""05_quantization's exercise checks: right answers pass, each wrong one fails with its hint."""

import pytest
import torch

from ftlearn import quantization as q
from ftlearn.exercises import check

bnb = pytest.importorskip("bitsandbytes", reason="exercise 05.1 reads bitsandbytes' packed codes")


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    linears = {f"layer{i}": torch.randn(64, 128) * 0.02 for i in range(3)}
    acts = {name: torch.randn(40, 128) for name in linears}
    return linears, acts


def test_05_1_dequantize_by_hand():
    torch.manual_seed(1)
    w = torch.randn(16, 64) * 0.02
    packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    truth = bnb.functional.dequantize_4bit(packed, state).reshape(-1)[:64]
    check("05.1", truth, packed=packed, state=state)
    codes = q.unpack_4bit(packed, w.shape).reshape(-1)[:64].long()
    swapped = codes.view(32, 2).flip(1).reshape(-1)
    with pytest.raises(AssertionError, match="nibbles swapped"):
        check("05.1", q.nf4_levels()[swapped] * state.absmax[0], packed=packed, state=state)
    with pytest.raises(AssertionError, match="absmax"):
        check("05.1", q.nf4_levels()[codes], packed=packed, state=state)
    with pytest.raises(AssertionError, match="64 weights"):
        check("05.1", truth[:32], packed=packed, state=state)
    with pytest.raises(AssertionError, match="not W's first block"):
        check("05.1", w.reshape(-1)[:64], packed=packed, state=state)
    _, nested = bnb.functional.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    with pytest.raises(AssertionError, match="compress_statistics"):
        check("05.1", truth, packed=packed, state=nested)


def test_05_2_block_size(weights):
    linears, _ = weights

    def error(size):
        return (
            100
            * sum(
                q.quant_error(w, q.nf4_dequantize(*q.nf4_quantize(w, size), size))["relative"]
                for w in linears.values()
            )
            / len(linears)
        )

    errors = {64: error(64), 1024: error(1024)}
    bits = {s: q.bits_per_param(s, double_quant=True) for s in errors}
    check("05.2", errors, bits=bits, linears=linears)
    assert errors[1024] > errors[64]  # bigger blocks: larger absmax, coarser steps
    with pytest.raises(AssertionError, match="in percent"):
        check("05.2", {s: e / 100 for s, e in errors.items()}, bits=bits, linears=linears)
    with pytest.raises(AssertionError, match="blocks of 1024"):
        check("05.2", {64: errors[64], 1024: errors[64]}, bits=bits, linears=linears)
    with pytest.raises(AssertionError, match="double quantization"):
        check("05.2", errors, bits={s: q.bits_per_param(s) for s in errors}, linears=linears)
    with pytest.raises(AssertionError, match="at least one larger"):
        check("05.2", {64: errors[64]}, bits={64: bits[64]}, linears=linears)


def test_05_3_output_error(weights):
    linears, acts = weights
    levels = q.lloyd_max_levels(torch.cat([w.reshape(-1) for w in linears.values()]))
    wins, ratios = 0, []
    for name, w in linears.items():
        y = acts[name] @ w.T
        err = [
            ((acts[name] @ q.codebook_dequantize(*q.codebook_quantize(w, lv), lv).T - y).norm()
             / y.norm()).item()
            for lv in (q.nf4_levels(), levels)
        ]  # fmt: skip
        wins += err[1] < err[0]
        ratios.append(err[1] / err[0])
    ratio = sum(ratios) / len(ratios)
    check("05.3", wins, ratio=ratio, linears=linears, acts=acts, levels=levels)
    with pytest.raises(AssertionError, match="compare"):
        check("05.3", wins - 1, ratio=ratio, linears=linears, acts=acts, levels=levels)
    with pytest.raises(AssertionError, match="mean over the layers"):
        check("05.3", wins, ratio=1 / ratio, linears=linears, acts=acts, levels=levels)
    with pytest.raises(AssertionError, match="count"):
        check("05.3", 0.5, ratio=ratio, linears=linears, acts=acts, levels=levels)
