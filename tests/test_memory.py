"""The memory estimator against measured peaks, and the arithmetic behind it."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ftlearn import memory as mem

SMALL = LlamaConfig(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    tie_word_embeddings=False,
)
# Fewer, wider layers, grouped-query attention, tied embeddings and a vocabulary big enough for
# the fp32 logits to be the largest activation: a different balance of the same terms.
WIDE = LlamaConfig(
    vocab_size=6144,
    hidden_size=384,
    intermediate_size=1024,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("config", [SMALL, WIDE], ids=["small", "wide"])
def test_estimate_within_20_percent_of_measured_peak(config, method):
    # AdamW makes its state in the first step, so full fine-tuning needs a second step to show the
    # steady state; LoRA's state is a few hundred KB here, and one step is enough.
    steps = 2 if method == "full" else 1
    step = mem.train_step_fn(config, method, batch_size=8, seq_len=128, steps=steps)
    measured = mem.measure_peak(step, "cpu")
    est = mem.estimate(config, method, torch.float32, batch_size=8, seq_len=128, optimizer="adamw")
    assert 0.8 <= est.total / measured <= 1.2, f"estimate {est.total:,} vs measured {measured:,}"


def test_qlora_estimate_within_20_percent_of_model_bytes_plus_measured_step(tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    from peft import LoraConfig, get_peft_model

    from ftlearn.quantization import bnb_config, model_bytes

    LlamaForCausalLM(SMALL).save_pretrained(tmp_path)
    quantized = LlamaForCausalLM.from_pretrained(
        tmp_path, quantization_config=bnb_config("nf4", torch.float32), device_map="cpu"
    )
    model = get_peft_model(quantized, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    tokens = torch.randint(0, SMALL.vocab_size, (8, 128))

    def one_step():  # the adapters' AdamW state is ~0.2 MB: one step shows the peak
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()

    # the model exists before the measurement starts, so its bytes are added
    measured = model_bytes(model) + mem.measure_peak(one_step, "cpu")
    est = mem.estimate(SMALL, "qlora", torch.float32, batch_size=8, seq_len=128)
    assert est.weights == pytest.approx(model_bytes(model), rel=0.05)
    assert 0.8 <= est.total / measured <= 1.2, f"estimate {est.total:,} vs measured {measured:,}"


def test_training_peak_of_a_built_model_equals_building_it_inside_the_measurement():
    torch.manual_seed(0)
    model = LlamaForCausalLM(SMALL)
    measured = mem.training_peak(model, batch_size=8, seq_len=128, optimizer="adamw", steps=2)
    # the parameters, plus RoPE's inv_freq buffers (a few hundred bytes)
    assert measured["weights"] == pytest.approx(4 * mem.as_shape(SMALL).n_params, abs=1024)
    inside = mem.measure_peak(mem.train_step_fn(SMALL, "full", 8, 128, steps=2), "cpu")
    assert measured["total"] == pytest.approx(inside, rel=0.03)
    with pytest.raises(ValueError, match="adamw"):
        mem.make_optimizer("adam", model.parameters())


def test_8bit_optimizer_state_is_a_quarter_of_adamw():
    pytest.importorskip("bitsandbytes", reason="the 8-bit optimizers are bitsandbytes'")
    w = torch.nn.Parameter(torch.randn(256, 256))
    sizes = {}
    for name in ("adamw", "paged_adamw_8bit"):
        opt = mem.make_optimizer(name, [w])
        w.grad = torch.randn_like(w)
        opt.step()
        sizes[name] = sum(
            t.numel() * t.element_size()
            for t in opt.state[w].values()
            if torch.is_tensor(t) and t.numel() > 1
        )
    per_param = mem.OPTIMIZER_BYTES["paged_adamw_8bit"](4)
    # two uint8 moments + fp32 absmax per 256 values, plus two 256-entry fp32 code tables
    assert sizes["paged_adamw_8bit"] == pytest.approx(w.numel() * per_param + 2 * 256 * 4, rel=0.01)
    assert sizes["paged_adamw_8bit"] < sizes["adamw"] / 3


def test_measure_peak_sees_tensors_not_python_objects():
    def fn():
        a = torch.ones(2 * 1024**2)  # 8 MiB, kept
        b = torch.ones(1024**2)  # 4 MiB, freed at once
        del b
        junk = [float(i) for i in range(200_000)]  # ~6 MB of Python floats: not tensor memory
        c = torch.ones(512 * 1024)  # 2 MiB, allocated after b was freed
        return a, c, junk

    assert mem.measure_peak(fn, "cpu") == 12 * 1024**2


def test_param_count_from_config_equals_the_model():
    for config in (SMALL, WIDE):
        model = LlamaForCausalLM(config)
        assert mem.as_shape(config).n_params == sum(p.numel() for p in model.parameters())
        linear = sum(
            m.weight.numel()
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in n
        )
        assert mem.as_shape(model).linear_params == linear


def test_catalog_sizes_match_their_names():
    expected = {
        "SmolLM2-135M": 0.135,
        "SmolLM2-360M": 0.36,
        "Qwen2.5-0.5B": 0.49,
        "Llama-3.2-1B": 1.24,
        "SmolLM2-1.7B": 1.71,
        "Llama-3.2-3B": 3.21,
        "Mistral-7B": 7.24,
        "Qwen2.5-7B": 7.62,
        "Llama-3.1-8B": 8.03,
        "Llama-2-13B": 13.0,
        "Llama-3.1-70B": 70.6,
    }
    assert set(expected) == set(mem.MODELS)
    for name, billions in expected.items():
        assert mem.as_shape(name).n_params / 1e9 == pytest.approx(billions, rel=0.01), name
    assert mem.as_shape(7.0).n_params / 1e9 == pytest.approx(7.0, rel=0.05)


def test_full_finetuning_activations_follow_the_documented_formula():
    shape = mem.as_shape(SMALL)
    h, kv, i, tokens = 256, 256, 688, 8 * 128
    acts = mem.activation_bytes(shape, 8, 128, 4, "full")
    assert acts["per_layer"] == tokens * 4 * (9 * h + 2 * kv + 4 * i)
    assert acts["logits"] == 3 * tokens * 2048 * 4
    lora = mem.activation_bytes(shape, 8, 128, 4, "lora", ("q_proj", "v_proj"), lora_r=8)
    assert lora["per_layer"] == tokens * (4 * (5 * h + 2 * kv + 3 * i) + 4 * 8 * 2)


def test_components_scale_the_right_way():
    kw = dict(dtype=torch.bfloat16, batch_size=4, seq_len=1024)
    full = mem.estimate("Llama-3.2-1B", "full", **kw)
    lora = mem.estimate("Llama-3.2-1B", "lora", **kw)
    qlora = mem.estimate("Llama-3.2-1B", "qlora", kbit_prepared=False, **kw)
    assert lora.optimizer < full.optimizer / 100 and lora.gradients < full.gradients / 100
    assert qlora.weights < lora.weights / 2
    # peft's prepare_model_for_kbit_training: 2 more bytes for each 16-bit parameter left unquantized
    shape = mem.as_shape("Llama-3.2-1B")
    prepared = mem.estimate("Llama-3.2-1B", "qlora", **kw)
    assert prepared.weights - qlora.weights == 2 * (shape.n_params - shape.linear_params)
    assert full.optimizer == 2 * full.weights  # AdamW: two bf16 moments per bf16 weight
    # checkpointing shrinks the layers' activations, not the fp32 logits of a 32k-128k vocabulary
    for name, shrink in (("Mistral-7B", 3), ("Llama-3.2-1B", 1.5)):
        plain = mem.estimate(name, "lora", **kw).activations
        ckpt = mem.estimate(name, "lora", gradient_checkpointing=True, **kw).activations
        assert ckpt < plain / shrink, name
    acts = mem.activation_bytes(
        mem.as_shape("Llama-3.2-1B"), 4, 1024, 2, "lora", gradient_checkpointing=True
    )
    assert acts["logits"] > acts["total"] / 2
    double = mem.estimate("Llama-3.2-1B", "lora", dtype=torch.bfloat16, batch_size=8, seq_len=1024)
    assert double.activations == 2 * lora.activations  # every term is linear in the batch
    eight_bit = mem.estimate("Llama-3.2-1B", "full", optimizer="adamw_8bit", **kw)
    assert eight_bit.optimizer == pytest.approx(full.optimizer / 2 * 1.0156, rel=1e-3)
    assert mem.estimate("Llama-3.2-1B", "full", optimizer="sgd", **kw).optimizer == 0
    assert full.sum_of_parts > full.total  # gradients and activations do not peak together


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="full"):
        mem.estimate(SMALL, "prefix")
    with pytest.raises(ValueError, match="adamw"):
        mem.estimate(SMALL, "full", optimizer="adam")
    with pytest.raises(ValueError, match="q_proj"):
        mem.estimate(SMALL, "lora", lora_targets=("query",))
    with pytest.raises(KeyError, match="T4"):
        mem.will_it_fit("Llama-3.1-8B", gpu="TPU")


def test_will_it_fit():
    assert mem.will_it_fit("Llama-3.1-8B", "qlora", "T4").fits
    assert not mem.will_it_fit("Llama-3.1-8B", "full", "T4").fits
    assert not mem.will_it_fit("Llama-3.1-70B", "qlora", "Colab (free T4)").fits
    fit = mem.will_it_fit("Llama-3.1-70B", "qlora", "A100 80GB")
    assert fit.fits and fit.headroom_gb == pytest.approx(79.0 - fit.needed_gb)
    assert mem.will_it_fit(1.0, "lora", 8.0).available_gb == 7.0  # a GPU given as its GB


def test_fit_table_and_widget_fallback(monkeypatch, capsys):
    table = mem.fit_table(["SmolLM2-135M", "Llama-3.1-8B"], gpu="T4")
    assert "SmolLM2-135M" in table and "✓" in table and "✗" in table
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # makes `import ipywidgets` fail
    assert mem.fit_widget() is None
    assert "Llama-3.1-70B" in capsys.readouterr().out


def test_fit_widget_builds_controls_and_shows_their_default_as_a_table(monkeypatch):
    widgets = pytest.importorskip("ipywidgets", reason="ipywidgets not installed here")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    control = mem.fit_widget()
    assert isinstance(control, widgets.VBox)
    # the static rendering: one DataFrame of the default selection, which GitHub and Colab show
    (frame,) = shown
    default = mem.will_it_fit(**mem.FIT_DEFAULTS, method="qlora", gpu="T4")
    assert frame.loc["peak GB", "qlora"] == round(default.needed_gb, 2)
    assert set(frame.columns) == set(mem.METHODS) and frame.loc["fits", "qlora"] == "✓"
    assert "VBox" not in repr(control)  # what a page without a kernel prints in its place
    shown.clear()
    mem.fit_widget(static=False)
    assert not shown


def test_llama_config_has_the_catalog_shape():
    for name in ("SmolLM2-135M", "Llama-3.1-8B"):
        shape = mem.as_shape(mem.llama_config(name))
        assert shape.linear_shapes() == mem.MODELS[name].linear_shapes()
        assert shape.n_params == mem.MODELS[name].n_params
    with torch.device("meta"):  # no memory: only the parameter count
        model = LlamaForCausalLM(mem.llama_config("SmolLM2-135M"))
    assert sum(p.numel() for p in model.parameters()) == mem.MODELS["SmolLM2-135M"].n_params


def test_smollm2_135m_lora_estimate_within_20_percent_of_measured():
    # a random SmolLM2-135M: memory depends on its shapes, not on the trained weights
    config = mem.llama_config("SmolLM2-135M")
    step = mem.train_step_fn(config, "lora", batch_size=2, seq_len=64, steps=1)
    measured = mem.measure_peak(step, "cpu")
    est = mem.estimate(config, "lora", torch.float32, batch_size=2, seq_len=64)
    assert 0.8 <= est.total / measured <= 1.2, f"estimate {est.total:,} vs measured {measured:,}"


def test_step_stats_measures_the_profiled_steps_and_times_the_rest():
    from types import SimpleNamespace

    stats = mem.StepStats(memory_steps=2, device="cpu")
    state = SimpleNamespace(global_step=0)
    stats.on_train_begin(None, state, None)
    kept = []
    for step in range(1, 5):
        stats.on_step_begin(None, state, None)
        kept.append(torch.ones(1024**2))  # 4 MiB per step, kept
        state.global_step = step
        stats.on_step_end(None, state, None)
    stats.on_train_end(None, state, None)
    assert stats.peak == 2 * 4 * 1024**2  # only the first two steps were profiled
    assert len(stats.times) == 4 and stats.step_seconds > 0


def test_fit_rows_agree_with_will_it_fit():
    rows = mem.fit_rows(["Llama-3.1-8B"], gpu="T4")
    assert rows[0]["qlora fits"] and not rows[0]["full fits"]
    assert rows[0]["lora"] == round(mem.will_it_fit("Llama-3.1-8B", "lora", "T4").needed_gb, 2)


def test_lora_dropout_and_trl_loss_estimates_within_20_percent_of_measured():
    pytest.importorskip("trl", reason="the fused loss is TRL's")
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    kw = dict(batch_size=8, seq_len=128, optimizer="adamw", device="cpu")
    model = get_peft_model(
        LlamaForCausalLM(SMALL), LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.1)
    )
    measured = mem.training_peak(model, 8, 128, steps=1)["total"]
    est = mem.estimate(
        SMALL, "lora", torch.float32, lora_targets="all-linear", lora_dropout=0.1, **kw
    )
    assert 0.8 <= est.total / measured <= 1.2, f"estimate {est.total:,} vs measured {measured:,}"
    no_dropout = mem.estimate(SMALL, "lora", torch.float32, lora_targets="all-linear", **kw)
    assert no_dropout.total < est.total  # dropout keeps a copy of every adapted layer's input

    full = LlamaForCausalLM(SMALL)
    measured = mem.training_peak(full, 8, 128, steps=2, loss="trl")["total"]
    est = mem.estimate(SMALL, "full", torch.float32, loss="trl", **kw)
    assert 0.8 <= est.total / measured <= 1.2, f"estimate {est.total:,} vs measured {measured:,}"
    # TRL's tile is 32,768 entries wide whatever the vocabulary: here far more than the logits
    assert mem.trl_loss_tile(1024, 4) == 1024 * 32768 * 4
    with pytest.raises(ValueError, match="trl"):
        mem.estimate(SMALL, "full", loss="fused")


def test_mixed_precision_keeps_fp32_weights_gradients_and_adamw_for_full_finetuning():
    kw = dict(dtype=torch.float16, batch_size=1, seq_len=512, gradient_checkpointing=True)
    pure = mem.estimate("Llama-3.2-1B", "full", **kw)
    mixed = mem.estimate("Llama-3.2-1B", "full", mixed_precision=True, **kw)
    n = mem.as_shape("Llama-3.2-1B").n_params
    assert (mixed.weights, mixed.gradients, mixed.optimizer) == (
        4 * n,
        4 * n,
        8 * n,
    )  # 16 bytes a param
    assert mixed.activations == pure.activations  # still computed in fp16
    lora = mem.estimate("Llama-3.2-1B", "lora", **kw)
    assert mem.estimate("Llama-3.2-1B", "lora", mixed_precision=True, **kw).total == lora.total
    # what a T4 holds: full fine-tuning in mixed precision stops well before 1B parameters
    assert mem.will_it_fit("SmolLM2-360M", "full", "T4").fits
    assert not mem.will_it_fit("Llama-3.2-1B", "full", "T4").fits


def _buffer_bytes(model) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("fmt", ["int8", "nf4", "fp4"])
def test_weight_bytes_equal_what_bitsandbytes_stores(tmp_path, fmt):
    pytest.importorskip("bitsandbytes", reason="the 4- and 8-bit layers are bitsandbytes'")
    from peft import prepare_model_for_kbit_training

    from ftlearn.quantization import bnb_config, model_bytes, quiet_bitsandbytes

    quiet_bitsandbytes()
    # widths that leave a partial block of 64 weights and of 256 scales, and a tied head
    config = LlamaConfig(
        vocab_size=2000,
        hidden_size=200,
        intermediate_size=520,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=fmt == "fp4",
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    for double_quant in (True, False) if fmt != "int8" else (True,):
        quant = bnb_config(fmt, torch.bfloat16, double_quant=double_quant)
        model = LlamaForCausalLM.from_pretrained(
            tmp_path, quantization_config=quant, device_map="cpu", dtype=torch.bfloat16
        )
        for prepared in (False, True):
            if prepared:  # casts embeddings, head and norms to fp32; int8 and 4-bit stay
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            est = mem.weight_bytes(config, fmt, torch.bfloat16, prepared, double_quant)
            by_part = {"linear": 0, "embeddings": 0, "norms": 0}
            for name, param in model.named_parameters():
                part = (
                    "norms" if "norm" in name else "linear" if "layers." in name else "embeddings"
                )
                by_part[part] += param.numel() * param.element_size()
                if part != "linear":
                    assert param.dtype == (torch.float32 if prepared else torch.bfloat16), name
            key = (fmt, double_quant, prepared)
            assert by_part == {p: getattr(est, p) for p in by_part}, key
            # transformers counts parameters and buffers; model_bytes adds bitsandbytes' scales
            assert model.get_memory_footprint() - _buffer_bytes(model) == est.params, key
            assert model_bytes(model) - _buffer_bytes(model) == est.total, key


def test_weight_bytes_of_llama_8b_count_the_16_bit_embeddings():
    shape = mem.as_shape("Llama-3.1-8B")
    rest = shape.n_params - shape.linear_params  # embeddings, head, norms: 13% of the weights
    nf4 = mem.weight_bytes(shape, "nf4", torch.bfloat16)
    int8 = mem.weight_bytes(shape, "int8", torch.bfloat16)
    assert nf4.embeddings + nf4.norms == int8.embeddings + int8.norms == 2 * rest
    # 4.127 bits on every weight would say 3.86 GiB and 7.48 GiB
    assert 5.2 < nf4.total / mem.GB < 5.4 and 8.4 < int8.total / mem.GB < 8.5
    prepared = mem.weight_bytes(shape, "nf4", torch.bfloat16, kbit_prepared=True)
    assert prepared.total - nf4.total == 2 * rest
    assert mem.weight_bytes(shape, "bf16").total == 2 * shape.n_params
    with pytest.raises(ValueError, match="nf4"):
        mem.weight_bytes(shape, "int4")


def test_estimate_against_published_peaks_of_real_runs():
    from ftlearn import published_peaks as pp

    rows = {r["run"]: r for r in pp.compare()}
    measured = [r for r in rows.values() if r["kind"] == "measured"]
    ratio = {r["run"]: r["predicted / published"] for r in measured}
    # Runs whose every setting the source states and the estimator models (LitGPT's LoRA runs,
    # torchtune's LoRA and full 7B): predicted / published spans 0.79-0.95 today.
    modelled = [r["run"] for r in measured if not r["not modelled"] and not r["assumed"]]
    assert len(modelled) >= 5
    assert all(1 / 1.3 <= ratio[run] <= 1.3 for run in modelled), {r: ratio[r] for r in modelled}
    # Every measured run, the partly modelled ones too: 0.76-3.52 today.
    assert all(1 / 3.6 <= x <= 3.6 for x in ratio.values()), ratio
    # and off the way the reasons say: a chunked loss never holds three fp32 copies of the logits,
    # which the estimate counts (too high); bitsandbytes < 0.43.2 kept every 4-bit layer's input
    # (too low, and lower than the LoRA run of the same table)
    for run, x in ratio.items():
        if "chunked" in rows[run]["not modelled"]:
            assert x > 1, run
    for size in ("7B", "13B"):
        assert ratio[f"LitGPT QLoRA {size}"] < 0.85 * ratio[f"LitGPT LoRA {size}"], size
    # a bound, not a measurement: QLoRA's 65B run fits in 48 GB
    bound = rows["QLoRA paper 65B"]
    assert bound["kind"] == "fits in" and bound["predicted GiB"] < bound["published GiB"]
    assert (
        pp.PEAKS[0].reported_bytes == 21.30e9
    )  # LitGPT divides by 1e9; torchtune 2024-09 by 2**30
    assert {p.model for p in pp.PEAKS} <= set(pp.SHAPES)
