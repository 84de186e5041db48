"""Quantization by hand (05_quantization, 06_qlora), checked against bitsandbytes.

The hand-written part (number formats, int8 absmax and zero-point, NF4 levels, block-wise NF4) is
plain torch, kept apart from the library path so that a learner can read every step. The second
part measures what bitsandbytes really stores: its 4-bit codes, its quantization state, and the
bytes a quantized model holds. Tests assert that our NF4 codes equal bitsandbytes' codes exactly.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# Number formats
# ---------------------------------------------------------------------------------------------

FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit) as magnitudes before scaling to [-1, 1];
# 0.0625 is its one subnormal, 2 its smallest normal (bitsandbytes.functional.get_4bit_type).
_FP4_MAGNITUDES = [0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]


def fp4_levels() -> torch.Tensor:
    """The 15 distinct values of bitsandbytes' FP4, scaled to [-1, 1] and sorted (±0 merged)."""
    mags = torch.tensor(_FP4_MAGNITUDES) / 12.0
    return torch.cat([-mags.flip(0)[:-1], mags])


def number_formats() -> list[dict]:
    """One row per format (fp32, fp16, bf16, int8, fp4, nf4): bits, range and resolution."""
    notes = {"fp32": "IEEE float", "fp16": "IEEE half", "bf16": "fp32's exponent, 7 mantissa bits"}
    rows = []
    for name, dtype in FLOAT_DTYPES.items():
        fi = torch.finfo(dtype)
        rows.append(
            {
                "format": name,
                "bits": fi.bits,
                "max": fi.max,
                "smallest_normal": fi.smallest_normal,
                "resolution_near_1": fi.eps,  # the gap between 1.0 and the next value up
                "note": notes[name],
            }
        )
    rows.append(
        {
            "format": "int8",
            "bits": 8,
            "max": 127.0,
            "smallest_normal": None,
            "resolution_near_1": 1.0,
            "note": "integers; a scale maps [-absmax, absmax] onto [-127, 127]",
        }
    )
    for name, levels in (("fp4", fp4_levels()), ("nf4", nf4_levels())):
        positive = levels[levels > 0]
        rows.append(
            {
                "format": name,
                "bits": 4,
                "max": 1.0,
                # NF4 is a lookup table, not a float: it has no normal/subnormal split.
                "smallest_normal": 2.0 / 12.0 if name == "fp4" else None,
                # the gap below 1.0: no level lies above it
                "resolution_near_1": float(1.0 - positive[-2]),
                "note": f"{levels.numel()} levels in [-1, 1], times each block's absmax",
            }
        )
    return rows


def representable_values(
    fmt: str, lo: float = -1.0, hi: float = 1.0, absmax: float = 1.0, max_values: int = 1_000_000
) -> torch.Tensor:
    """Every value of `fmt` in [lo, hi], sorted (int8/fp4/nf4 scaled by `absmax`), for a plot."""
    if fmt in ("int8", "fp4", "nf4"):
        grid = {"int8": torch.arange(-127, 128) / 127.0, "fp4": fp4_levels(), "nf4": nf4_levels()}
        values = grid[fmt].double() * absmax
    elif fmt in ("fp16", "bf16"):
        # 65,536 bit patterns: enumerate them all and keep the finite ones in range.
        bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
        values = bits.view(FLOAT_DTYPES[fmt]).double()
        values = values[torch.isfinite(values)].unique()
    elif fmt == "fp32":
        # Positive floats are ordered like their bit patterns, so [a, b] is a range of integers.
        def span(a: float, b: float) -> torch.Tensor:
            ia, ib = (torch.tensor(v, dtype=torch.float32).view(torch.int32).item() for v in (a, b))
            if ib - ia + 1 > max_values:
                raise ValueError(
                    f"fp32 has {ib - ia + 1:,} values in [{a}, {b}]; narrow the range."
                )
            return torch.arange(ia, ib + 1, dtype=torch.int32).view(torch.float32).double()

        parts = []
        if hi > 0:
            parts.append(span(max(lo, 0.0), hi))
        if lo < 0:
            parts.append(-span(max(-hi, 0.0), -lo))
        values = torch.cat(parts).unique()
    else:
        raise ValueError(f"Unknown format '{fmt}': use one of fp32, fp16, bf16, int8, fp4, nf4.")
    values = values[(values >= lo) & (values <= hi)]
    if values.numel() > max_values:
        raise ValueError(f"{fmt} has {values.numel():,} values in [{lo}, {hi}]; narrow the range.")
    return values


def relative_gaps(fmt: str, points: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, gap from x to the next value up / x) over `fmt`'s positive range: range and precision.

    Floats: `points` log-spaced magnitudes from the smallest subnormal to the largest finite
    value. int8, fp4, nf4: their positive levels below 1.0, for a block whose absmax is 1.
    """
    if fmt in FLOAT_DTYPES:
        dtype = FLOAT_DTYPES[fmt]
        fi = torch.finfo(dtype)
        smallest = fi.smallest_normal * fi.eps  # the smallest subnormal: 2^-149 in fp32
        grid = torch.logspace(math.log10(smallest), math.log10(fi.max), points, dtype=torch.float64)
        x = grid.to(dtype).unique()
        x = x[(x > 0) & (x < fi.max)]
        # Neighbouring floats subtract exactly, so the gap is computed in the format itself.
        gap = torch.nextafter(x, torch.tensor(math.inf, dtype=dtype)) - x
        return x.double(), gap.double() / x.double()
    levels = representable_values(fmt)
    positive = levels[levels > 0]
    return positive[:-1], (positive[1:] - positive[:-1]) / positive[:-1]


# ---------------------------------------------------------------------------------------------
# int8: absmax (symmetric) and zero-point (asymmetric), per tensor or block-wise
# ---------------------------------------------------------------------------------------------


def _to_blocks(x: torch.Tensor, blocksize: int | None) -> torch.Tensor:
    """Flatten to fp32 rows of `blocksize` (None: one row); pad the tail by repeating its last value."""
    flat = x.reshape(-1).float()
    size = flat.numel() if blocksize is None else blocksize
    pad = -flat.numel() % size
    if pad:  # a repeated value never changes the last block's min, max or absmax
        flat = torch.cat([flat, flat[-1:].expand(pad)])
    return flat.view(-1, size)


def _from_blocks(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo `_to_blocks`: drop the padding and restore the shape."""
    return blocks.reshape(-1)[: shape.numel()].view(shape)


def absmax_quantize(
    x: torch.Tensor, blocksize: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 absmax: q = round(x / scale), scale = absmax / 127 per block; returns (q, scales)."""
    blocks = _to_blocks(x, blocksize)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0  # an all-zero block
    q = torch.round(blocks / scale).clamp(-127, 127).to(torch.int8)
    return _from_blocks(q, x.shape), scale.squeeze(1)


def absmax_dequantize(
    q: torch.Tensor, scale: torch.Tensor, blocksize: int | None = None
) -> torch.Tensor:
    """Inverse of `absmax_quantize`: q * scale, block by block."""
    return _from_blocks(_to_blocks(q, blocksize) * scale[:, None], q.shape)


def zeropoint_quantize(
    x: torch.Tensor, blocksize: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 zero-point: maps [min, max] onto [-128, 127]; returns (q, scales, zero points)."""
    blocks = _to_blocks(x, blocksize)
    lo, hi = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-12) / 255.0
    # An integer zero point makes 0.0 exactly representable (padding, ReLU zeros stay exact).
    zero = -128 - torch.round(lo / scale)
    q = (torch.round(blocks / scale) + zero).clamp(-128, 127).to(torch.int8)
    return _from_blocks(q, x.shape), scale.squeeze(1), zero.squeeze(1)


def zeropoint_dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, blocksize: int | None = None
) -> torch.Tensor:
    """Inverse of `zeropoint_quantize`: (q - zero) * scale, block by block."""
    return _from_blocks((_to_blocks(q, blocksize) - zero[:, None]) * scale[:, None], q.shape)


def quant_error(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    """Mean and max absolute error, and relative error ||w - w_hat|| / ||w|| (Frobenius)."""
    diff = (w.float() - w_hat.float()).abs()
    return {
        "mean_abs": diff.mean().item(),
        "max_abs": diff.max().item(),
        "relative": (diff.norm() / w.float().norm().clamp(min=1e-12)).item(),
    }


def planted_outliers(
    rows: int = 256, cols: int = 1024, n_outliers: int = 4, magnitude: float = 20.0, seed: int = 0
) -> torch.Tensor:
    """A N(0, 1) activation matrix whose few outlier columns are `magnitude` times larger."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=gen)
    # LLM.int8() found outliers in a few fixed hidden dimensions, across most tokens: columns.
    cols_out = torch.randperm(cols, generator=gen)[:n_outliers]
    x[:, cols_out] *= magnitude
    return x


def outlier_features(x: torch.Tensor, threshold: float = 6.0, blocksize: int = 64) -> dict:
    """Columns of `x` with any |value| > threshold, and the int8 error they cause in each scheme.

    `x` is an activation matrix (tokens x features). Compares absmax int8 per tensor (one outlier
    sets the scale for everything), vector-wise (one scale per token row: an outlier column is in
    every row, so every row suffers), block-wise (an outlier only spoils its own block of
    `blocksize` values) and LLM.int8()'s decomposition (outlier columns kept in 16-bit, the rest
    quantized vector-wise).
    """
    x = x.float()
    cols = (x.abs() > threshold).any(dim=0).nonzero().flatten()

    def per_row(t: torch.Tensor) -> torch.Tensor:  # a row-major matrix's rows are its blocks
        return absmax_dequantize(*absmax_quantize(t, t.shape[1]), t.shape[1])

    mixed = x.clone()
    rest = torch.ones(x.shape[1], dtype=torch.bool)
    rest[cols] = False
    if rest.any():
        mixed[:, rest] = per_row(x[:, rest].contiguous())
    return {
        "columns": cols.tolist(),
        "fraction": cols.numel() / x.shape[1],
        "threshold": threshold,
        "per_tensor": quant_error(x, absmax_dequantize(*absmax_quantize(x))),
        "vector_wise": quant_error(x, per_row(x)),
        "blockwise": quant_error(x, absmax_dequantize(*absmax_quantize(x, blocksize), blocksize)),
        "outliers_in_16bit": quant_error(x, mixed),
    }


@torch.no_grad()
def linear_inputs(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    names: Iterable[str] | None = None,
    max_length: int = 256,
) -> dict[str, torch.Tensor]:
    """The input of every nn.Linear (or those in `names`) on `texts`: one row per real token.

    These are the activation matrices X in X @ W.T that LLM.int8() quantizes; padding is dropped.
    """
    wanted = None if names is None else set(names)
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = [
        module.register_forward_hook(
            lambda mod, args, out, name=name: captured.setdefault(name, []).append(args[0].detach())
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (wanted is None or name in wanted)
    ]
    enc = tokenizer(
        list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length
    ).to(next(model.parameters()).device)
    try:
        model.eval()(**enc)
    finally:
        for h in hooks:
            h.remove()
    keep = enc["attention_mask"].reshape(-1).bool()
    return {n: torch.cat(v).reshape(-1, v[0].shape[-1])[keep].float() for n, v in captured.items()}


# ---------------------------------------------------------------------------------------------
# NF4 from scratch
# ---------------------------------------------------------------------------------------------

# QLoRA, appendix: the outermost quantile is 1 - δ with δ = (1/30 + 1/32) / 2, the mean of the
# tail mass that 15 and 16 equal-probability bins would leave. It keeps ±1 finite (ppf(1) = inf).
NF4_OFFSET = 0.9677083


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels: normal quantiles (8 positive, 7 negative, an exact 0), scaled to [-1, 1]."""
    # As bitsandbytes' create_normal_map: evenly spaced probabilities from `offset` down to 0.5;
    # dropping 0.5 (the median, 0.0) leaves 8 positive quantiles, and 7 on the negative side.
    # The linspace stays fp32 as in bitsandbytes: that is what makes the levels bit-identical.
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())
    levels = (
        torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float().sort().values
    )
    return levels / levels.max()  # the largest positive quantile becomes 1.0; the smallest is -1.0


def int4_levels() -> torch.Tensor:
    """The 15 levels of symmetric int4 absmax: -7..7 divided by 7 (uniform, like int8 at 4 bits)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7.0


def codebook_quantize(
    w: torch.Tensor, levels: torch.Tensor, blocksize: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise lookup-table quantization: per block, scale by 1/absmax, take the nearest level.

    Returns (codes, absmax): uint8 indices into the sorted `levels` (shaped like `w`) and one fp32
    absmax per block. NF4, FP4 and uniform int4 differ only in their `levels`.
    """
    levels = levels.float()
    blocks = _to_blocks(w, blocksize)
    absmax = blocks.abs().amax(dim=1)
    # bitsandbytes multiplies by 1/absmax (it does not divide): the same rounding, the same codes
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1.0, 1.0)
    midpoints = (levels[:-1] + levels[1:]) / 2
    # The code is the number of midpoints the value lies strictly above: the nearest level,
    # a value exactly on a midpoint going to the lower one, as in bitsandbytes.
    codes = (scaled.unsqueeze(-1) > midpoints).sum(dim=-1).to(torch.uint8)
    return _from_blocks(codes, w.shape), absmax


def codebook_dequantize(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    levels: torch.Tensor,
    blocksize: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of `codebook_quantize`: levels[code] * absmax of its block, computed in fp32."""
    values = levels.float()[_to_blocks(codes, blocksize).long()]
    return _from_blocks(values * absmax[:, None], codes.shape).to(dtype)


def nf4_quantize(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise NF4: per block, divide by absmax and take the nearest level; returns (codes, absmax).

    Codes (uint8, 0..15, shaped like `w`) and fp32 absmax equal bitsandbytes' `quantize_4bit(...,
    quant_type="nf4")` exactly, because each step is done the same way: multiply by 1/absmax (not
    divide), clamp to [-1, 1], and compare with the fp32 midpoints between neighbouring levels. A
    value exactly on a midpoint goes to the lower level.
    """
    return codebook_quantize(w, nf4_levels(), blocksize)


def nf4_dequantize(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    blocksize: int = 64,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of `nf4_quantize`: level[code] * absmax of its block, computed in fp32."""
    return codebook_dequantize(codes, absmax, nf4_levels(), blocksize, dtype)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Two codes per byte as bitsandbytes stores them: element 2k in the high nibble, 2k+1 in the low."""
    flat = codes.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:  # bitsandbytes pads with a scaled 0.0, which is NF4 code 7
        flat = torch.cat([flat, torch.tensor([7], dtype=torch.uint8)])
    return ((flat[0::2] << 4) | flat[1::2]).unsqueeze(1)


def unpack_4bit(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `pack_4bit` (also reads bitsandbytes' packed uint8 weights)."""
    flat = packed.reshape(-1).view(torch.uint8)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)
    shape = torch.Size(shape)
    return codes[: shape.numel()].view(shape)


# ---------------------------------------------------------------------------------------------
# What NF4 optimises, and what it does not: a Lloyd-Max codebook for comparison
# ---------------------------------------------------------------------------------------------


def _scaled_with_weights(w: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every weight divided by its block's absmax (as `codebook_quantize` scales it), and absmax^2."""
    blocks = _to_blocks(w, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38)), -1.0, 1.0)
    n = w.numel()  # the padding `_to_blocks` repeats would count twice: drop it
    return scaled.reshape(-1)[:n].double(), (absmax**2).expand_as(blocks).reshape(-1)[:n].double()


def lloyd_max_levels(
    w: torch.Tensor,
    n_levels: int = 16,
    blocksize: int = 64,
    max_iters: int = 2000,
    tol: float = 1e-7,
) -> torch.Tensor:
    """The `n_levels` codebook in [-1, 1] with the least squared error on `w`, by Lloyd-Max.

    Each block is scaled by its absmax exactly as NF4 is, so the two codebooks compete on equal
    terms. Lloyd's iteration alternates the two conditions of an MSE optimum: every weight goes
    to its nearest level (cells bounded by the midpoints), and every level moves to the mean of
    its cell, weighted by absmax^2 because a block's error in weight units is absmax^2 times its
    scaled error. Neither step can raise the error. It starts from equal-share levels (quantiles
    of the scaled weights, NF4's idea applied to the data) and stops when no level moves by `tol`.
    """
    x, weight = _scaled_with_weights(w, blocksize)
    n = x.numel()
    if n < n_levels:
        raise ValueError(f"{n} weights cannot fit {n_levels} levels: pass more weights.")
    x, order = x.sort()
    weight = weight[order]
    # On sorted values a cell is a slice, and its sums are differences of two prefix sums.
    zero = torch.zeros(1, dtype=torch.float64)
    mass, moment = torch.cat([zero, weight.cumsum(0)]), torch.cat([zero, (weight * x).cumsum(0)])
    levels = x[((torch.arange(n_levels) + 0.5) / n_levels * n).long()]
    for _ in range(max_iters):
        # cell k: midpoint k-1 < x <= midpoint k, `codebook_quantize`'s rule (a tie goes down)
        inner = torch.searchsorted(x, (levels[:-1] + levels[1:]) / 2, right=True)
        edges = torch.cat([torch.tensor([0]), inner, torch.tensor([n])])
        m = mass[edges[1:]] - mass[edges[:-1]]
        new = torch.where(
            m > 0, (moment[edges[1:]] - moment[edges[:-1]]) / m.clamp(min=1e-300), levels
        )
        done = bool((new - levels).abs().max() < tol)  # an empty cell keeps its level
        levels = new.sort().values
        if done:
            break
    return levels.float()


def block_mse(w: torch.Tensor, w_hat: torch.Tensor, blocksize: int = 64) -> torch.Tensor:
    """Mean squared error of each block of `blocksize` consecutive weights (the last may be partial)."""
    sq = (w.float() - w_hat.float()).reshape(-1) ** 2
    pad = -sq.numel() % blocksize
    counts = torch.full((sq.numel() // blocksize + bool(pad),), float(blocksize))
    if pad:
        counts[-1] = blocksize - pad
    return torch.cat([sq, sq.new_zeros(pad)]).view(-1, blocksize).sum(dim=1) / counts


def code_entropy(codes: torch.Tensor, n_levels: int = 16) -> float:
    """Entropy in bits of the codes' frequencies: 4.0 for 16 codes used equally often."""
    p = torch.bincount(codes.reshape(-1).long(), minlength=n_levels).double() / codes.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def fake_quantize(model: nn.Module, levels: torch.Tensor, blocksize: int = 64) -> nn.Module:
    """A copy of `model` whose linear weights (not `lm_head`) are quantized to `levels` and back.

    The copy computes in its own dtype with the rounded weights: the quality of a codebook
    without its kernels, which is how a codebook bitsandbytes does not ship can be scored.
    """
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in clone.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[-1] != "lm_head":
                w = module.weight
                codes, absmax = codebook_quantize(w, levels, blocksize)
                w.copy_(codebook_dequantize(codes, absmax, levels, blocksize, w.dtype))
    return clone


# The formats of the error-histogram control: name -> levels (None: Lloyd-Max fitted on the weight)
CONTROL_FORMATS = {
    "int8": lambda: torch.arange(-127, 128, dtype=torch.float32) / 127.0,
    "int4 (uniform)": int4_levels,
    "fp4": fp4_levels,
    "nf4": nf4_levels,
    "lloyd-max (fitted)": None,
}
CONTROL_BLOCKSIZES = {"32": 32, "64": 64, "128": 128, "256": 256, "1024": 1024, "per tensor": None}


def format_error(w: torch.Tensor, fmt: str, blocksize: int | None = 64) -> torch.Tensor:
    """w quantized to `fmt` (a CONTROL_FORMATS name) with blocks of `blocksize` (None: one) and back, minus w."""
    if fmt not in CONTROL_FORMATS:
        raise ValueError(f"Unknown format '{fmt}': use one of {', '.join(CONTROL_FORMATS)}.")
    size = w.numel() if blocksize is None else blocksize
    make = CONTROL_FORMATS[fmt]
    levels = lloyd_max_levels(w, blocksize=size) if make is None else make()
    codes, absmax = codebook_quantize(w, levels, size)
    return codebook_dequantize(codes, absmax, levels, size) - w.float()


def _block_label(blocksize: int | None) -> str:
    return "per tensor" if blocksize is None else f"blocks of {blocksize}"


def plot_error_histograms(
    w: torch.Tensor, settings: Iterable[tuple[str, int | None]], ax=None, title: str = ""
):
    """Histograms of ŵ - w for each (format, block size), on shared bins, labelled with their error."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.2))
    errors = {(fmt, size): format_error(w, fmt, size) for fmt, size in settings}
    reach = max(e.abs().max().item() for e in errors.values())
    bins = torch.linspace(-reach, reach, 121).numpy()  # shared, so that heights compare
    norm = w.float().norm().item()
    for (fmt, size), e in errors.items():
        label = f"{fmt}, {_block_label(size)}: {100 * e.norm().item() / norm:.2f}% relative error"
        ax.hist(e.flatten().numpy(), bins=bins, histtype="step", lw=1.4, label=label)
    ax.set(xlabel="quantized - original weight", ylabel="weights", title=title)
    ax.legend(fontsize=8)
    return ax


def error_widget(w: torch.Tensor, static: bool = True):
    """An ipywidgets control (format, block size) -> histogram of w's quantization error.

    `static=True` first draws every 4-bit format at block size 64 as a figure: a widget shows only
    in a live kernel, and that figure is what GitHub and Colab's preview render in its place.
    """
    import matplotlib.pyplot as plt

    if static:
        four_bit = [(fmt, 64) for fmt in CONTROL_FORMATS if fmt != "int8"]
        plot_error_histograms(w, four_bit, title="the control's static view: every 4-bit format")
        plt.show()
    try:
        import ipywidgets as widgets
    except ImportError:
        print("ipywidgets is not installed: the figure above is the control's static view.")
        return None

    controls = {
        "fmt": widgets.ToggleButtons(options=list(CONTROL_FORMATS), value="fp4", description="format"),
        "size": widgets.ToggleButtons(options=list(CONTROL_BLOCKSIZES), value="64", description="block"),
    }  # fmt: skip

    def show(fmt: str, size: str) -> None:
        # NF4 in blocks of 64, what bitsandbytes stores, is the reference every choice is read against
        plot_error_histograms(w, dict.fromkeys([("nf4", 64), (fmt, CONTROL_BLOCKSIZES[size])]))
        plt.show()

    class ErrorControl(widgets.VBox):
        # what a page without a live kernel prints in the widget's place (else "VBox(children=...")
        def __repr__(self) -> str:
            return "[quantization-error control: live in Jupyter and Colab; the figure above is its static view]"

    out = widgets.interactive_output(show, controls)
    return ErrorControl([*controls.values(), out])


# ---------------------------------------------------------------------------------------------
# Double quantization: what the scales cost
# ---------------------------------------------------------------------------------------------


def bits_per_param(
    blocksize: int = 64,
    scale_bits: int = 32,
    double_quant: bool = False,
    dq_blocksize: int = 256,
    weight_bits: int = 4,
    dq_bits: int = 8,
) -> float:
    """Storage per weight: 4 + 32/64 = 4.5 bits; with double quant 4 + 8/64 + 32/(64*256) = 4.127."""
    if not double_quant:
        return weight_bits + scale_bits / blocksize
    # The absmax scales are themselves quantized to 8 bits, in blocks of 256 with one fp32 scale each.
    return weight_bits + dq_bits / blocksize + scale_bits / (blocksize * dq_blocksize)


def _state_tensors(state) -> dict[str, torch.Tensor]:
    """The tensors a bitsandbytes QuantState holds, by role."""
    tensors = {"absmax": state.absmax, "code": state.code}
    if getattr(state, "nested", False) and state.state2 is not None:
        tensors.update(
            offset=state.offset, nested_absmax=state.state2.absmax, nested_code=state.state2.code
        )
    return {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def quant_state_bytes(state) -> dict[str, int]:
    """Bytes of each tensor in a bitsandbytes QuantState (absmax, code tables, nested state)."""
    return {name: _nbytes(t) for name, t in _state_tensors(state).items()}


def describe_quant_state(state) -> list[dict]:
    """One row per tensor a bitsandbytes QuantState holds: role, dtype, shape, bytes."""
    return [
        {
            "tensor": name,
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": tuple(t.shape),
            "bytes": _nbytes(t),
        }
        for name, t in _state_tensors(state).items()
    ]


def bnb_bits_per_param(
    w: torch.Tensor,
    blocksize: int = 64,
    double_quant: bool = True,
    quant_type: str = "nf4",
    include_codebooks: bool = False,
) -> float:
    """Bits per weight that bitsandbytes really stores for `w`: packed codes + its QuantState.

    The 16-entry NF4 table and the 256-entry table of the nested 8-bit scales are a fixed cost
    per tensor (~1 KB), left out by default so the number compares with `bits_per_param`.
    """
    bnb = require_bitsandbytes()
    packed, state = bnb.functional.quantize_4bit(
        w, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant
    )
    parts = quant_state_bytes(state)
    if not include_codebooks:
        parts = {k: v for k, v in parts.items() if not k.endswith("code")}
    return 8 * (_nbytes(packed) + sum(parts.values())) / w.numel()


# ---------------------------------------------------------------------------------------------
# Bytes a model holds (quantized or not)
# ---------------------------------------------------------------------------------------------


def _weight_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """A linear layer's weight plus what bitsandbytes keeps beside it to dequantize it."""
    weight = module.weight
    yield weight
    state = getattr(weight, "quant_state", None)  # Params4bit (Linear4bit)
    if state is not None:
        yield from _state_tensors(state).values()
    # Int8Params (Linear8bitLt): per-row scales SCB, on the weight or, once used, on module.state
    for holder in (weight, getattr(module, "state", None)):
        for name in ("SCB", "CB"):
            t = getattr(holder, name, None)
            if isinstance(t, torch.Tensor):
                yield t


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Sum of bytes, counting a tensor seen twice (tied weights, CB is the weight) once."""
    seen, total = set(), 0
    for t in tensors:
        if t.device.type == "meta":
            continue
        key = (t.data_ptr(), _nbytes(t))
        if key not in seen:
            seen.add(key)
            total += _nbytes(t)
    return total


def linear_weight_bytes(model: nn.Module, exclude: Iterable[str] = ("lm_head",)) -> int:
    """Bytes held by the weights of every nn.Linear (incl. bnb Linear4bit/Linear8bitLt and scales).

    `lm_head` is left out by default: bitsandbytes keeps it in 16/32 bits (transformers skips it),
    so counting it would compare a layer that was never quantized. Pass `exclude=()` to count it.
    """
    exclude = tuple(exclude)
    tensors = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(name.split(".")[-1] == e for e in exclude):
            tensors.extend(_weight_tensors(module))
    return _unique_bytes(tensors)


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, plus quantization scales that are neither.

    Unlike transformers' `get_memory_footprint()`, this counts the QuantState of 4-bit layers.
    """
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        if isinstance(module, nn.Linear):
            tensors.extend(_weight_tensors(module))
    return _unique_bytes(tensors)


# ---------------------------------------------------------------------------------------------
# The library path: BitsAndBytesConfig
# ---------------------------------------------------------------------------------------------


def require_bitsandbytes():
    """Import bitsandbytes, or raise an ImportError that says how to install it."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            "bitsandbytes is not installed. Install it with `pip install bitsandbytes` "
            "(version 0.45 or newer also runs NF4 and int8 on CPU), then restart the kernel."
        )
    import bitsandbytes

    return bitsandbytes


def quiet_bitsandbytes() -> None:
    """Hide bitsandbytes' warnings (an optional CPU kernel it could not fetch; int8's fp16 cast).

    Both are logged on every CPU run and are harmless: the first names a faster 4-bit CPU kernel
    that needs the `kernels` package and a download; the second, LLM.int8() computing in fp16,
    is explained in 05_quantization. Errors still show. Call it before loading a quantized model.
    """
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def fp4_supported(device: str = "cpu") -> bool:
    """True if this bitsandbytes can quantize and dequantize FP4 on `device` (tried, not assumed)."""
    bnb = require_bitsandbytes()
    try:
        w = torch.linspace(-1, 1, 64, device=device)
        packed, state = bnb.functional.quantize_4bit(w, blocksize=64, quant_type="fp4")
        back = bnb.functional.dequantize_4bit(packed, state)
        return bool((back - w).abs().max() < 0.2)
    except Exception:  # any failure means "not here"; the caller says what to do instead
        return False


def bnb_config(kind: str, compute_dtype: torch.dtype | None = None, double_quant: bool = True):
    """A transformers BitsAndBytesConfig for "int8", "nf4" (double quant on) or "fp4"."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind not in ("nf4", "fp4"):
        raise ValueError(f"Unknown kind '{kind}': use 'int8', 'nf4' or 'fp4'.")
    cuda = torch.cuda.is_available()
    if kind == "fp4" and not cuda and not fp4_supported("cpu"):
        raise RuntimeError(
            "FP4 needs CUDA in this version of bitsandbytes: it failed on CPU. "
            "Use bnb_config('nf4') here (NF4 also has lower error than FP4 on normal weights)."
        )
    if compute_dtype is None:
        # bf16 where the GPU has it; a T4 has no bf16, so fp16; fp32 on CPU, where it is fastest.
        if cuda:
            compute_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            compute_dtype = torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )
