"""Quantization by hand must agree with bitsandbytes: same NF4 levels, codes, values and bytes."""

from __future__ import annotations

import importlib.util
from fractions import Fraction

import pytest
import torch

from ftlearn import quantization as q

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is needed to compare against it")
F = bnb.functional


# --- number formats -------------------------------------------------------------------------


def test_number_formats_table():
    rows = {r["format"]: r for r in q.number_formats()}
    assert list(rows) == ["fp32", "fp16", "bf16", "int8", "fp4", "nf4"]
    assert rows["fp16"]["max"] == 65504.0
    assert rows["bf16"]["resolution_near_1"] == 2**-7  # 7 mantissa bits
    assert rows["fp32"]["smallest_normal"] == rows["bf16"]["smallest_normal"] == 2**-126
    assert rows["nf4"]["resolution_near_1"] == pytest.approx(1 - 0.7229568, abs=1e-6)
    assert rows["fp4"]["resolution_near_1"] == pytest.approx(1 / 3, abs=1e-6)


def test_representable_values_counts():
    assert q.representable_values("fp16", 1.0, 2.0).numel() == 1024 + 1  # 10 mantissa bits, and 2.0
    assert q.representable_values("bf16", 1.0, 2.0).numel() == 128 + 1
    assert q.representable_values("fp32", 1.0, 1.0 + 2**-20).numel() == 2**3 + 1
    assert q.representable_values("nf4").numel() == 16
    assert q.representable_values("fp4").numel() == 15
    assert q.representable_values("int8", 0.0, 1.0).numel() == 128
    with pytest.raises(ValueError, match="narrow"):
        q.representable_values("fp32", -1.0, 1.0)


def test_relative_gaps_show_range_and_precision():
    for fmt, mantissa_bits, top in (
        ("fp32", 23, 3.4e38),
        ("fp16", 10, 65504.0),
        ("bf16", 7, 3.4e38),
    ):
        x, rel = q.relative_gaps(fmt)
        normal = x >= torch.finfo(q.FLOAT_DTYPES[fmt]).smallest_normal
        # between powers of two the gap is 2^-mantissa_bits times the power: rel in (2^-m-1, 2^-m]
        assert (rel[normal] <= 2.0**-mantissa_bits).all() and (
            rel[normal] > 2.0 ** -(mantissa_bits + 1)
        ).all()
        assert rel[~normal].max() == 1.0  # the smallest subnormal: the next value is twice it
        assert x.max() < top and x.max() > top / 2
    x, rel = q.relative_gaps("int8")
    assert torch.allclose(
        rel, 1 / torch.arange(1, 127, dtype=torch.float64), rtol=1e-4
    )  # fp32 levels
    assert q.relative_gaps("nf4")[0].numel() == 7  # 8 positive levels, the top one has no next


# --- int8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("blocksize", [None, 64])
def test_absmax_round_trip_error_is_at_most_half_a_step(blocksize):
    x = torch.randn(96, 100)  # 9,600 values: the last block of 64 is partial
    codes, scale = q.absmax_quantize(x, blocksize)
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    assert codes.abs().max() == 127  # the absmax of each block maps to ±127
    back = q.absmax_dequantize(codes, scale, blocksize)
    step = scale.repeat_interleave(blocksize or x.numel())[: x.numel()].view(x.shape)
    assert ((back - x).abs() <= step / 2 + 1e-7).all()
    assert scale.numel() == (1 if blocksize is None else -(-x.numel() // 64))


def test_zeropoint_uses_the_full_range_for_one_sided_data():
    x = torch.relu(torch.randn(4096))  # activations after ReLU: nothing below 0
    codes, scale, zero = q.zeropoint_quantize(x)
    back = q.zeropoint_dequantize(codes, scale, zero)
    assert codes.min() == -128 and codes.max() >= 126
    assert (back[x == 0] == 0).all()  # an integer zero point keeps 0.0 exact
    absmax_back = q.absmax_dequantize(*q.absmax_quantize(x))
    # absmax wastes the negative half of int8 here: about twice the error
    assert q.quant_error(x, back)["mean_abs"] < 0.6 * q.quant_error(x, absmax_back)["mean_abs"]


def test_blockwise_beats_per_tensor_when_outliers_are_planted():
    x = q.planted_outliers(rows=128, cols=512, n_outliers=3, magnitude=20.0, seed=1)
    report = q.outlier_features(x, threshold=6.0, blocksize=64)
    planted = (x.abs().amax(dim=0) > 10).nonzero().flatten().tolist()
    assert report["columns"] == planted and len(planted) == 3
    per_tensor, blockwise = report["per_tensor"]["mean_abs"], report["blockwise"]["mean_abs"]
    assert blockwise < per_tensor / 5
    assert report["outliers_in_16bit"]["mean_abs"] < per_tensor / 5
    # the outliers are whole columns: every token row holds one, and one scale per row stays coarse
    assert report["vector_wise"]["mean_abs"] > 3 * report["outliers_in_16bit"]["mean_abs"]
    clean = q.outlier_features(torch.randn(128, 512))
    assert clean["columns"] == []  # N(0, 1) almost never passes 6 sigma


# --- NF4 ------------------------------------------------------------------------------------


def test_nf4_levels_equal_bitsandbytes_codebook():
    levels = q.nf4_levels()
    assert torch.equal(levels, F.get_4bit_type("nf4", device="cpu"))  # bit for bit
    assert (levels > 0).sum() == 8 and (levels < 0).sum() == 7 and levels[7] == 0.0
    assert levels[0] == -1.0 and levels[-1] == 1.0
    assert q.NF4_OFFSET == pytest.approx(1 - (1 / 30 + 1 / 32) / 2, abs=1e-7)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((128, 192), torch.float32),
        ((64, 128), torch.bfloat16),
        ((7, 33), torch.float32),  # 231 values: a partial last block and an odd count to pad
    ],
)
def test_nf4_codes_and_values_equal_bitsandbytes(shape, dtype):
    torch.manual_seed(0)
    w = (torch.randn(shape) * 0.02).to(dtype)
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    codes, absmax = q.nf4_quantize(w, blocksize=64)
    assert torch.equal(codes, q.unpack_4bit(packed, w.shape))
    # same nibble order: element 0 goes in the high nibble
    assert torch.equal(q.pack_4bit(codes), packed)
    assert torch.equal(absmax, state.absmax)
    state.dtype = torch.float32  # compare in fp32, before any cast
    theirs = F.dequantize_4bit(packed, state).reshape(shape)
    ours = q.nf4_dequantize(codes, absmax, blocksize=64)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert (codes != 7).float().mean() > 0.8  # not a degenerate all-zero quantization


def test_nf4_ties_go_to_the_lower_level_like_bitsandbytes():
    levels = q.nf4_levels()
    midpoints = (levels[:-1] + levels[1:]) / 2
    # absmax 1.0 makes every scaled value equal the input exactly: each midpoint is a true tie
    w = torch.cat([torch.tensor([1.0]), midpoints, torch.zeros(64 - 16)])
    codes, _ = q.nf4_quantize(w)
    packed, _ = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert codes[1:16].tolist() == list(range(15))
    assert torch.equal(codes, q.unpack_4bit(packed, w.shape))


def test_codebook_quantize_is_nf4_fp4_and_int4_with_other_levels():
    torch.manual_seed(1)
    w = torch.randn(96, 128) * 0.03
    # uniform int4: the nearest of 15 levels is round(7 * x / absmax)
    codes, absmax = q.codebook_quantize(w, q.int4_levels(), 64)
    scaled = (w.reshape(-1, 64) / w.reshape(-1, 64).abs().amax(1, keepdim=True)).reshape(w.shape)
    assert torch.equal(codes.long() - 7, torch.round(7 * scaled).long())
    # FP4: the same lookup with bitsandbytes' FP4 values gives its dequantised weights
    packed, state = F.quantize_4bit(w, blocksize=64, quant_type="fp4")
    fp4_codes, fp4_absmax = q.codebook_quantize(w, q.fp4_levels(), 64)
    ours = q.codebook_dequantize(fp4_codes, fp4_absmax, q.fp4_levels(), 64)
    torch.testing.assert_close(
        ours, F.dequantize_4bit(packed, state).reshape(w.shape), atol=0, rtol=0
    )
    # on normally distributed weights NF4 has the lowest error of the three 4-bit grids
    errors = {
        name: q.quant_error(w, q.codebook_dequantize(*q.codebook_quantize(w, lv, 64), lv, 64))[
            "relative"
        ]
        for name, lv in (
            ("nf4", q.nf4_levels()),
            ("fp4", q.fp4_levels()),
            ("int4", q.int4_levels()),
        )
    }
    assert errors["nf4"] < errors["int4"] and errors["nf4"] < errors["fp4"], errors


def test_describe_quant_state_lists_the_nested_scales():
    w = torch.randn(256, 256)
    _, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    rows = {r["tensor"]: r for r in q.describe_quant_state(state)}
    assert rows["absmax"]["dtype"] == "uint8" and rows["absmax"]["shape"] == (256 * 256 // 64,)
    assert rows["nested_absmax"]["dtype"] == "float32"
    assert rows["nested_absmax"]["shape"] == (256 * 256 // 64 // 256,)
    assert sum(r["bytes"] for r in rows.values()) == sum(q.quant_state_bytes(state).values())


def test_linear_inputs_are_the_rows_each_linear_layer_reads(tiny_llama):
    class BatchEncoding_(dict):
        def to(self, device):
            return self

    class Tok:  # the tokenizer interface linear_inputs uses: pad to the longest, with a mask
        def __call__(self, texts, **kwargs):
            ids = [[int(c) for c in t] for t in texts]
            width = max(map(len, ids))
            return BatchEncoding_(
                input_ids=torch.tensor([x + [0] * (width - len(x)) for x in ids]),
                attention_mask=torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            )

    model = tiny_llama(vocab_size=10, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    acts = q.linear_inputs(model, Tok(), ["12345", "678"])
    assert acts["model.layers.0.mlp.down_proj"].shape == (8, 48)  # 5 + 3 real tokens, no padding
    assert acts["model.layers.0.self_attn.q_proj"].shape == (8, 32)
    # q, k and v read the same normalised input
    assert torch.equal(
        acts["model.layers.0.self_attn.q_proj"], acts["model.layers.0.self_attn.v_proj"]
    )
    only = q.linear_inputs(model, Tok(), ["12"], names=["lm_head"])
    assert list(only) == ["lm_head"]


def test_quiet_bitsandbytes_hides_warnings_not_errors():
    import logging

    q.quiet_bitsandbytes()
    assert logging.getLogger("bitsandbytes").getEffectiveLevel() == logging.ERROR


# --- bits per parameter ---------------------------------------------------------------------


def test_bits_per_param_exact():
    assert q.bits_per_param() == Fraction(9, 2)
    assert q.bits_per_param(double_quant=True) == 4 + Fraction(8, 64) + Fraction(32, 64 * 256)
    assert q.bits_per_param(blocksize=128, double_quant=True) < q.bits_per_param(double_quant=True)


@pytest.mark.parametrize("double_quant", [False, True])
def test_bits_per_param_read_from_bnb_quant_state(double_quant):
    w = torch.randn(1024, 1024)
    measured = q.bnb_bits_per_param(w, double_quant=double_quant)
    assert measured == pytest.approx(q.bits_per_param(double_quant=double_quant), rel=0.01)
    with_tables = q.bnb_bits_per_param(w, double_quant=double_quant, include_codebooks=True)
    assert measured < with_tables < measured + 0.01  # ~1 KB of tables per tensor


# --- whole models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_llama):
    # widths of whole blocks of 64 and of 256 scales: bitsandbytes' 4-bit formula holds exactly
    model = tiny_llama(vocab_size=512, hidden_size=256, intermediate_size=512)
    path = tmp_path_factory.mktemp("llama")
    model.save_pretrained(path)
    return path, model


def _load(path, kind):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(
        path, quantization_config=q.bnb_config(kind), device_map="cpu"
    )


def _linear_params(model) -> tuple[int, int, int]:
    """(weights, linear layers, summed out_features) of the decoder layers' linear layers."""
    shapes = [
        (m.out_features, m.in_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    ]
    return sum(o * i for o, i in shapes), len(shapes), sum(o for o, _ in shapes)


def test_4bit_linear_bytes_match_the_formula_and_are_under_a_third(llama_dir):
    path, fp32 = llama_dir
    n, layers, _ = _linear_params(fp32)
    fp32_bytes = q.linear_weight_bytes(fp32)
    assert fp32_bytes == 4 * n
    nf4 = _load(path, "nf4")
    nf4_bytes = q.linear_weight_bytes(nf4)
    assert nf4_bytes < fp32_bytes / 3
    # 4.127 bits per weight, plus per layer: 16 + 256 fp32 code-table entries and the offset
    expected = n * q.bits_per_param(double_quant=True) / 8
    assert expected <= nf4_bytes <= expected + layers * (4 * (16 + 256) + 4 + 4 * 2)
    assert q.model_bytes(nf4) > nf4.get_memory_footprint()  # transformers misses the QuantState
    x = torch.randint(0, 512, (1, 8))
    assert torch.isfinite(nf4(x).logits).all()


def test_8bit_linear_bytes_count_int8_weights_and_row_scales(llama_dir):
    path, fp32 = llama_dir
    n, _, rows = _linear_params(fp32)
    int8 = _load(path, "int8")
    assert q.linear_weight_bytes(int8) == n + 4 * rows  # 1 byte per weight + an fp32 scale per row
    assert q.linear_weight_bytes(int8) < q.linear_weight_bytes(fp32) / 3


# --- BitsAndBytesConfig ---------------------------------------------------------------------


def test_bnb_config_kinds(monkeypatch):
    nf4 = q.bnb_config("nf4")
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert q.bnb_config("int8").load_in_8bit
    with pytest.raises(ValueError, match="int8"):
        q.bnb_config("nf3")
    # bitsandbytes 0.50 runs FP4 on CPU; where a version does not, the error must say so
    if q.fp4_supported("cpu"):
        assert q.bnb_config("fp4").bnb_4bit_quant_type == "fp4"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(q, "fp4_supported", lambda device="cpu": False)
    with pytest.raises(RuntimeError, match="FP4 needs CUDA"):
        q.bnb_config("fp4")


def test_missing_bitsandbytes_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        q.bnb_config("nf4")


# --- what NF4 optimises: Lloyd-Max, code entropy, the error control ----------------------------

# Max (1960), table 1: the optimum 16-level quantizer of N(0, 1), positive outputs, and its MSE.
MAX_1960_LEVELS = [0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733]
MAX_1960_MSE = 0.009497


def _mse(w, levels, blocksize=64):
    return (
        (
            (
                q.codebook_dequantize(*q.codebook_quantize(w, levels, blocksize), levels, blocksize)
                - w
            )
            ** 2
        )
        .mean()
        .item()
    )


def test_lloyd_max_finds_max_1960_optimum_for_a_normal():
    # 200,000 quantiles of N(0, 1) stand for the distribution; one block, so no absmax scaling
    x = torch.special.ndtri((torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000).float()
    levels = q.lloyd_max_levels(x, blocksize=x.numel(), max_iters=20_000, tol=1e-9)
    top = x.abs().max()  # the levels are in units of the block's absmax
    # 3e-3: Max's table has 4 digits, and the grid stops at 4.4 sigma (measured gap: 1.3e-3 at the top)
    torch.testing.assert_close(levels[8:] * top, torch.tensor(MAX_1960_LEVELS), atol=3e-3, rtol=0)
    torch.testing.assert_close(levels[:8], -levels[8:].flip(0), atol=1e-5, rtol=0)
    assert _mse(x, levels, x.numel()) == pytest.approx(MAX_1960_MSE, rel=0.01)


def test_lloyd_max_on_uniform_values_is_the_uniform_grid():
    x = torch.linspace(-1, 1, 16 * 1000)  # one block with absmax 1: the values are their own scale
    levels = q.lloyd_max_levels(x, blocksize=x.numel())
    torch.testing.assert_close(levels, (torch.arange(16) + 0.5) / 8 - 1, atol=1e-3, rtol=0)


def test_lloyd_max_never_raises_the_error_and_beats_nf4_on_normal_blocks():
    torch.manual_seed(0)
    w = torch.randn(256, 256) * 0.02
    errors = [_mse(w, q.lloyd_max_levels(w, max_iters=k)) for k in (1, 2, 5, 20, 100)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(errors, errors[1:])), errors
    levels = q.lloyd_max_levels(w)
    # a fixed point: every level is the absmax^2-weighted mean of the weights it is nearest to
    codes, absmax = q.codebook_quantize(w, levels)
    scaled = (w.reshape(-1, 64) / absmax[:, None]).reshape(-1).double()
    weight = (absmax[:, None] ** 2).expand(-1, 64).reshape(-1).double()
    for k in range(16):
        cell = codes.reshape(-1) == k
        centroid = (weight[cell] * scaled[cell]).sum() / weight[cell].sum()
        assert abs(centroid.item() - levels[k].item()) < 1e-5, k
    # the same absmax scaling, the same 16 levels, and a lower error than NF4 (by ~9% here)
    assert errors[-1] < 0.95 * _mse(w, q.nf4_levels())
    with pytest.raises(ValueError, match="more weights"):
        q.lloyd_max_levels(torch.randn(8))


def test_block_mse_and_code_entropy_exact():
    w, w_hat = torch.zeros(130), torch.zeros(130)
    w_hat[:64], w_hat[128:] = (
        1.0,
        3.0,
    )  # block 0 all off by 1, block 1 exact, block 2 (2 values) by 3
    assert q.block_mse(w, w_hat).tolist() == [1.0, 0.0, 9.0]
    assert q.code_entropy(torch.arange(16).repeat(5)) == pytest.approx(4.0)
    assert q.code_entropy(torch.full((10,), 3)) == 0.0
    assert q.code_entropy(torch.tensor([0, 1])) == pytest.approx(1.0)


def test_fake_quantize_rounds_every_linear_but_the_head(tiny_llama):
    model = tiny_llama(tie_word_embeddings=False)
    before = {n: p.clone() for n, p in model.named_parameters()}
    levels = q.nf4_levels()
    fq = q.fake_quantize(model, levels)
    for name, p in fq.named_parameters():
        assert torch.equal(before[name], dict(model.named_parameters())[name])  # original untouched
        if name.endswith("proj.weight"):
            expected = q.nf4_dequantize(*q.nf4_quantize(before[name]))
            assert torch.equal(p, expected) and not torch.equal(p, before[name]), name
        else:  # embeddings, norms and lm_head stay as they were
            assert torch.equal(p, before[name]), name


def test_error_widget_draws_its_static_view_then_builds_controls(monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widgets = pytest.importorskip("ipywidgets", reason="ipywidgets not installed here")
    torch.manual_seed(0)
    w = torch.randn(64, 128) * 0.02
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    control = q.error_widget(w)
    # first the static view (then the live output's first plot): a histogram per 4-bit format
    fig = shown[0]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [s.split(",")[0] for s in labels] == [
        "int4 (uniform)",
        "fp4",
        "nf4",
        "lloyd-max (fitted)",
    ]
    nf4 = 100 * q.quant_error(w, w + q.format_error(w, "nf4", 64))["relative"]
    assert f"nf4, blocks of 64: {nf4:.2f}%" in labels[2]
    assert isinstance(control, widgets.VBox) and "VBox" not in repr(control)
    shown.clear()
    monkeypatch.setitem(__import__("sys").modules, "ipywidgets", None)  # `import ipywidgets` fails
    assert q.error_widget(w) is None and len(shown) == 1
    assert "static view" in capsys.readouterr().out
    with pytest.raises(ValueError, match="nf4"):
        q.format_error(w, "nf5")
    # per tensor: one block, one scale, a larger error than blocks of 64
    assert q.format_error(w, "nf4", None).norm() > q.format_error(w, "nf4", 64).norm()
    plt.close("all")


def test_changed_compares_codes_through_bitsandbytes_cpu_repack(llama_dir):
    # CI's CPU has AVX-512 BF16: there bitsandbytes 0.50 repacks each Linear4bit at its first
    # inference, and 06's byte comparison saw (32768, 1) -> (256, 128). This machine has no such
    # CPU, so the repack is applied by hand, with the function bitsandbytes itself calls.
    import copy

    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from ftlearn import measure
    from ftlearn.compat import loaded_4bit_codes

    nf4 = _load(llama_dir[0], "nf4")
    before = measure.snapshot(nf4, lambda p: p.dtype == torch.uint8)
    weight = nf4.model.layers[0].self_attn.q_proj.weight
    loaded = weight.detach().clone()
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, copy.copy(weight.quant_state))
    assert weight.shape != loaded.shape and weight.quant_state.packing_format_for_cpu
    assert torch.equal(loaded_4bit_codes(weight), loaded), "the inverse must give back the loaded bytes"
    assert weight.quant_state.packing_format_for_cpu, "undoing the layout works on a copy"
    assert measure.changed(before, nf4) == (0, sum(t.numel() for t in before.values()))
    with torch.no_grad():
        weight.data[0, 0] ^= 0x01  # one 4-bit code changes: counted through the repack
    assert measure.changed(before, nf4)[0] == 1


def test_keep_4bit_layout_undoes_and_prevents_bitsandbytes_cpu_repack(llama_dir):
    # On a CPU with AVX-512 BF16 (CI's, and some sessions'), an inference pass repacks each
    # Linear4bit for a bf16 kernel with no autograd; 10's "as trained" logits then came from bf16.
    # The repack is applied by hand (any CPU), undone, and the switch is checked off everywhere.
    import copy

    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from ftlearn.compat import keep_4bit_layout

    nf4 = _load(llama_dir[0], "nf4")
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        for module in nf4.modules():  # as loaded: the layout bitsandbytes stores
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        reference = nf4(input_ids=ids).logits
    weight = nf4.model.layers[0].self_attn.q_proj.weight
    loaded = weight.detach().clone()
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(weight.data, copy.copy(weight.quant_state))
    for module in nf4.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True  # as on an AVX-512 BF16 CPU
    n = keep_4bit_layout(nf4)
    layers = [m for m in nf4.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert n == len(layers) > 0 and not any(m.support_avx512bf16_for_cpu for m in layers)
    assert not getattr(weight.quant_state, "packing_format_for_cpu", False) and torch.equal(weight.detach(), loaded)
    nf4.eval()
    with torch.no_grad():
        again = nf4(input_ids=ids).logits  # would repack here on such a CPU, were the switch on
    assert not any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False) for m in layers)
    # The same codes; the repack rounded that layer's scales to bf16 and its inverse keeps them so
    # (measured here: logits within ~1e-4): undoing it is a repair, not keeping it off is the fix.
    assert (again - reference).abs().max() < 1e-2, "the undone layer must compute as loaded, to bf16 scales"


def test_models_load_keeps_the_4bit_layout():
    from ftlearn.models import load
    from ftlearn.profiles import get

    model, _ = load(get("tiny"), "base", quantization=q.bnb_config("nf4"))
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
