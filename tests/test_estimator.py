"""The memory estimator (ftlearn.estimator) against measured and published peaks, and its arithmetic."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ftlearn import estimator as est
from ftlearn.estimator import FIT_SETUP, TrainingSetup
from ftlearn.measure import measure_peak, training_peak
from ftlearn.shapes import as_shape, llama_config

QV = ("q_proj", "v_proj")
# Two balances of the same terms: four layers whose activations dominate; and fewer, wider layers,
# grouped-query attention, tied embeddings and a vocabulary big enough for the fp32 logits to be
# the largest activation.
SMALL = {"vocab_size": 2048, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
         "num_key_value_heads": 4}  # fmt: skip
WIDE = {"vocab_size": 6144, "hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6,
        "num_key_value_heads": 2, "tie_word_embeddings": True}  # fmt: skip
ON_CPU = {"dtype": torch.float32, "batch_size": 8, "seq_len": 128, "device": "cpu"}


def lora_on(model, targets=QV, dropout: float = 0.0):
    """peft LoRA at r=8 (alpha 16) on `targets`: what TrainingSetup(lora_r=8, ...) describes."""
    config = LoraConfig(r=8, lora_alpha=16, target_modules=list(targets), lora_dropout=dropout)
    return get_peft_model(model, config)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("overrides", [SMALL, WIDE], ids=["small", "wide"])
def test_estimate_within_20_percent_of_measured_peak(tiny_llama, overrides, method):
    # AdamW makes its state in the first step, so full fine-tuning needs a second step to show the
    # steady state; LoRA's state is a few hundred KiB here, and one step is enough.
    model = tiny_llama(**overrides)
    config = model.config
    if method == "lora":
        model = lora_on(model)
    measured = training_peak(model, 8, 128, steps=2 if method == "full" else 1)["total"]
    predicted = est.estimate(config, TrainingSetup(method, lora_targets=QV, **ON_CPU))
    assert 0.8 <= predicted.total / measured <= 1.2, f"estimate {predicted.total:,} vs {measured:,}"


def test_qlora_estimate_within_20_percent_of_model_bytes_plus_measured_step(tiny_llama, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    from transformers import LlamaForCausalLM

    from ftlearn.quantization import bnb_config, model_bytes

    plain = tiny_llama(**SMALL)
    plain.save_pretrained(tmp_path)
    quantized = LlamaForCausalLM.from_pretrained(
        tmp_path, quantization_config=bnb_config("nf4", torch.float32), device_map="cpu"
    )
    model = lora_on(quantized)
    tokens = torch.randint(0, plain.config.vocab_size, (8, 128))

    def one_step():  # the adapters' AdamW state is ~0.2 MiB: one step shows the peak
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()

    # the model exists before the measurement starts, so its bytes are added
    measured = model_bytes(model) + measure_peak(one_step, "cpu")
    setup = TrainingSetup("qlora", optimizer="adamw", lora_targets=QV, **ON_CPU)
    predicted = est.estimate(plain.config, setup)
    assert predicted.weights == pytest.approx(model_bytes(model), rel=0.05)
    assert 0.8 <= predicted.total / measured <= 1.2, f"estimate {predicted.total:,} vs {measured:,}"


def test_smollm2_135m_lora_estimate_within_20_percent_of_measured():
    # a random SmolLM2-135M: memory depends on its shapes, not on the trained weights
    from transformers import LlamaForCausalLM

    config = llama_config("SmolLM2-135M")
    torch.manual_seed(0)
    model = lora_on(LlamaForCausalLM(config))
    measured = training_peak(model, 2, 64, steps=1)["total"]
    setup = TrainingSetup("lora", lora_targets=QV, **{**ON_CPU, "batch_size": 2, "seq_len": 64})
    predicted = est.estimate(config, setup)
    assert 0.8 <= predicted.total / measured <= 1.2, f"estimate {predicted.total:,} vs {measured:,}"


def test_lora_dropout_and_trl_loss_estimates_within_20_percent_of_measured(tiny_llama):
    pytest.importorskip("trl", reason="the fused loss is TRL's")
    model = lora_on(tiny_llama(**SMALL), targets=["q_proj", "k_proj", "v_proj", "o_proj",
                    "gate_proj", "up_proj", "down_proj"], dropout=0.1)  # fmt: skip
    measured = training_peak(model, 8, 128, steps=1)["total"]
    setup = TrainingSetup("lora", lora_targets="all-linear", lora_dropout=0.1, **ON_CPU)
    predicted = est.estimate(model.config, setup)
    assert 0.8 <= predicted.total / measured <= 1.2, f"estimate {predicted.total:,} vs {measured:,}"
    no_dropout = est.estimate(model.config, replace(setup, lora_dropout=0.0))
    assert no_dropout.total < predicted.total  # dropout keeps a copy of every adapted layer's input

    full = tiny_llama(**SMALL)
    measured = training_peak(full, 8, 128, steps=2, loss="trl")["total"]
    predicted = est.estimate(full.config, TrainingSetup("full", loss="trl", **ON_CPU))
    assert 0.8 <= predicted.total / measured <= 1.2, f"estimate {predicted.total:,} vs {measured:,}"
    # TRL's tile is 32,768 entries wide whatever the vocabulary: here far more than the logits
    assert est.trl_loss_tile(1024, 4) == 1024 * 32768 * 4


def test_full_finetuning_activations_follow_the_documented_formula(tiny_config):
    shape = as_shape(tiny_config(**SMALL))
    h, kv, i, tokens = 256, 256, 688, 8 * 128
    acts = est.activation_bytes(shape, TrainingSetup("full", **ON_CPU))
    assert acts["per_layer"] == tokens * 4 * (9 * h + 2 * kv + 4 * i)
    assert acts["logits"] == 3 * tokens * 2048 * 4
    lora = est.activation_bytes(shape, TrainingSetup("lora", lora_targets=QV, **ON_CPU))
    assert lora["per_layer"] == tokens * (4 * (5 * h + 2 * kv + 3 * i) + 4 * 8 * 2)


def test_components_scale_the_right_way():
    kw = dict(dtype=torch.bfloat16, batch_size=4, seq_len=1024, mixed_precision=False)
    full = est.estimate("Llama-3.2-1B", TrainingSetup("full", **kw))
    lora = est.estimate("Llama-3.2-1B", TrainingSetup("lora", **kw))
    qlora = est.estimate("Llama-3.2-1B", TrainingSetup("qlora", kbit_prepared=False, **kw))
    assert lora.optimizer < full.optimizer / 100 and lora.gradients < full.gradients / 100
    assert qlora.weights < lora.weights / 2
    # peft's prepare_model_for_kbit_training: 2 more bytes for each 16-bit parameter left unquantized
    shape = as_shape("Llama-3.2-1B")
    prepared = est.estimate("Llama-3.2-1B", TrainingSetup("qlora", **kw))
    assert prepared.weights - qlora.weights == 2 * (shape.n_params - shape.linear_params)
    assert full.optimizer == 2 * full.weights  # AdamW: two bf16 moments per bf16 weight
    # checkpointing shrinks the layers' activations, not the fp32 logits of a 32k-128k vocabulary
    for name, shrink in (("Mistral-7B", 3), ("Llama-3.2-1B", 1.5)):
        plain = est.estimate(name, TrainingSetup("lora", **kw)).activations
        ckpt = est.estimate(name, TrainingSetup("lora", gradient_checkpointing=True, **kw))
        assert ckpt.activations < plain / shrink, name
    acts = est.activation_bytes(shape, TrainingSetup("lora", gradient_checkpointing=True, **kw))
    assert acts["logits"] > acts["total"] / 2
    double = est.estimate("Llama-3.2-1B", TrainingSetup("lora", **{**kw, "batch_size": 8}))
    assert double.activations == 2 * lora.activations  # every term is linear in the batch
    eight_bit = est.estimate("Llama-3.2-1B", TrainingSetup("full", optimizer="adamw_8bit", **kw))
    assert eight_bit.optimizer == pytest.approx(full.optimizer / 2 * 1.0156, rel=1e-3)
    assert est.estimate("Llama-3.2-1B", TrainingSetup("full", optimizer="sgd", **kw)).optimizer == 0
    # gradients and activations do not peak together: the peak is less than the sum of the parts
    assert full.weights + full.gradients + full.optimizer + full.activations > full.total
    # QLoRA's recipe pages 8-bit AdamW unless the setup names another optimizer
    assert TrainingSetup("qlora").optimizer_name == "paged_adamw_8bit"
    assert TrainingSetup("qlora", optimizer="adamw").optimizer_name == "adamw"


def test_mixed_precision_keeps_fp32_weights_gradients_and_adamw_for_full_finetuning():
    kw = dict(dtype=torch.float16, batch_size=1, seq_len=512, gradient_checkpointing=True)
    pure = est.estimate("Llama-3.2-1B", TrainingSetup("full", mixed_precision=False, **kw))
    mixed = est.estimate("Llama-3.2-1B", TrainingSetup("full", mixed_precision=True, **kw))
    n = as_shape("Llama-3.2-1B").n_params
    assert (mixed.weights, mixed.gradients, mixed.optimizer) == (4 * n, 4 * n, 8 * n)  # 16 bytes
    assert (pure.weights, pure.optimizer) == (2 * n, 4 * n)
    assert mixed.activations == pure.activations  # still computed in fp16
    lora = est.estimate("Llama-3.2-1B", TrainingSetup("lora", mixed_precision=False, **kw))
    assert est.estimate("Llama-3.2-1B", TrainingSetup("lora", **kw)).total == lora.total
    # what a T4 holds: full fine-tuning in mixed precision stops well before 1B parameters
    full = replace(FIT_SETUP, method="full")
    assert est.will_it_fit("SmolLM2-360M", "T4", full).fits
    assert not est.will_it_fit("Llama-3.2-1B", "T4", full).fits


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="full"):
        TrainingSetup("prefix")
    with pytest.raises(ValueError, match="adamw"):
        TrainingSetup("full", optimizer="adam")
    with pytest.raises(ValueError, match="q_proj"):
        TrainingSetup("lora", lora_targets=("query",))
    with pytest.raises(ValueError, match="all-linear"):
        TrainingSetup("lora", lora_targets="mlp")
    with pytest.raises(ValueError, match="trl"):
        TrainingSetup(loss="fused")
    with pytest.raises(ValueError, match="bf16"):
        TrainingSetup(dtype="bf15")
    with pytest.raises(ValueError, match="cuda"):
        TrainingSetup(device="tpu")
    with pytest.raises(ValueError, match="batch_size=0"):
        TrainingSetup(batch_size=0)
    with pytest.raises(KeyError, match="T4"):
        est.will_it_fit("Llama-3.1-8B", gpu="TPU")
    # peft keeps target_modules as a set: the setup stores a tuple, and stays hashable
    assert hash(TrainingSetup(lora_targets={"q_proj"})) == hash(
        TrainingSetup(lora_targets=("q_proj",))
    )


def test_will_it_fit():
    assert FIT_SETUP.method == "qlora" and FIT_SETUP.gradient_checkpointing
    assert est.will_it_fit("Llama-3.1-8B", "T4").fits
    assert not est.will_it_fit("Llama-3.1-8B", "T4", replace(FIT_SETUP, method="full")).fits
    assert not est.will_it_fit("Llama-3.1-70B", "Colab (free T4)").fits
    fit = est.will_it_fit("Llama-3.1-70B", "A100 80GB")
    assert fit.fits and fit.headroom_gib == pytest.approx(79.0 - fit.needed_gib)
    assert est.will_it_fit(1.0, 8.0, replace(FIT_SETUP, method="lora")).available_gib == 7.0
    assert "GiB" in str(fit) and "GiB" in fit.estimate.table()


def test_fit_rows_agree_with_will_it_fit():
    rows = est.fit_rows(["Llama-3.1-8B"], gpu="T4")
    assert rows[0]["qlora_fits"] and not rows[0]["full_fits"]
    lora = est.will_it_fit("Llama-3.1-8B", "T4", replace(FIT_SETUP, method="lora"))
    assert rows[0]["lora_gib"] == round(lora.needed_gib, 2)


def test_fit_table_and_widget_fallback(monkeypatch, capsys):
    table = est.fit_table(["SmolLM2-135M", "Llama-3.1-8B"], gpu="T4")
    assert "SmolLM2-135M" in table and "✓" in table and "✗" in table and "GiB" in table
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # makes `import ipywidgets` fail
    assert est.fit_widget() is None
    assert "Llama-3.1-70B" in capsys.readouterr().out


def test_fit_widget_builds_controls_and_shows_their_default_as_a_table(monkeypatch):
    widgets = pytest.importorskip("ipywidgets", reason="ipywidgets not installed here")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    control = est.fit_widget()
    assert isinstance(control, widgets.VBox)
    # the static rendering: one DataFrame of the default selection, which GitHub and Colab show
    (frame,) = shown
    default = est.will_it_fit(est.FIT_MODEL, "T4", FIT_SETUP)
    assert frame.loc["peak_gib", "qlora"] == round(default.needed_gib, 2)
    assert set(frame.columns) == set(est.METHODS) and frame.loc["fits", "qlora"] == "✓"
    assert "VBox" not in repr(control)  # what a page without a kernel prints in its place
    shown.clear()
    est.fit_widget(static=False)
    assert not shown


@pytest.mark.parametrize("fmt", ["int8", "nf4", "fp4"])
def test_weight_bytes_equal_what_bitsandbytes_stores(tiny_llama, tmp_path, fmt):
    pytest.importorskip("bitsandbytes", reason="the 4- and 8-bit layers are bitsandbytes'")
    from peft import prepare_model_for_kbit_training
    from transformers import LlamaForCausalLM

    from ftlearn.quantization import bnb_config, model_bytes, quiet_bitsandbytes

    quiet_bitsandbytes()
    # widths that leave a partial block of 64 weights and of 256 scales, and a tied head
    widths = {"vocab_size": 2000, "hidden_size": 200, "intermediate_size": 520,
              "tie_word_embeddings": fmt == "fp4"}  # fmt: skip
    base = tiny_llama(**widths)
    base.to(torch.bfloat16).save_pretrained(tmp_path)

    def buffer_bytes(model) -> int:
        return sum(b.numel() * b.element_size() for b in model.buffers())

    for double_quant in (True, False) if fmt != "int8" else (True,):
        quant = bnb_config(fmt, torch.bfloat16, double_quant=double_quant)
        model = LlamaForCausalLM.from_pretrained(
            tmp_path, quantization_config=quant, device_map="cpu", dtype=torch.bfloat16
        )
        for prepared in (False, True):
            if prepared:  # casts embeddings, head and norms to fp32; int8 and 4-bit stay
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            predicted = est.weight_bytes(base.config, fmt, torch.bfloat16, prepared, double_quant)
            by_part = {"linear": 0, "embeddings": 0, "norms": 0}
            for name, param in model.named_parameters():
                part = (
                    "norms" if "norm" in name else "linear" if "layers." in name else "embeddings"
                )
                by_part[part] += param.numel() * param.element_size()
                if part != "linear":
                    assert param.dtype == (torch.float32 if prepared else torch.bfloat16), name
            key = (fmt, double_quant, prepared)
            assert by_part == {p: getattr(predicted, p) for p in by_part}, key
            # transformers counts parameters and buffers; model_bytes adds bitsandbytes' scales
            assert model.get_memory_footprint() - buffer_bytes(model) == predicted.params, key
            assert model_bytes(model) - buffer_bytes(model) == predicted.total, key


def test_weight_bytes_of_llama_8b_count_the_16_bit_embeddings():
    shape = as_shape("Llama-3.1-8B")
    rest = shape.n_params - shape.linear_params  # embeddings, head, norms: 13% of the weights
    nf4 = est.weight_bytes(shape, "nf4", torch.bfloat16)
    int8 = est.weight_bytes(shape, "int8", torch.bfloat16)
    assert nf4.embeddings + nf4.norms == int8.embeddings + int8.norms == 2 * rest
    # 4.127 bits on every weight would say 3.86 GiB and 7.48 GiB
    assert 5.2 < nf4.total / est.GiB < 5.4 and 8.4 < int8.total / est.GiB < 8.5
    prepared = est.weight_bytes(shape, "nf4", torch.bfloat16, kbit_prepared=True)
    assert prepared.total - nf4.total == 2 * rest
    assert est.weight_bytes(shape, "bf16").total == 2 * shape.n_params
    with pytest.raises(ValueError, match="nf4"):
        est.weight_bytes(shape, "int4")
    assert est.fmt_bytes(3 * est.GiB) == "3.00 GiB" and est.fmt_bytes(1.5 * est.MiB) == "1.5 MiB"


def test_estimate_against_published_peaks_of_real_runs():
    from ftlearn import published_peaks as pp

    rows = {r["run"]: r for r in pp.compare()}
    measured = [r for r in rows.values() if r["kind"] == "measured"]
    ratio = {r["run"]: r["predicted_over_published"] for r in measured}
    # Runs whose every setting the source states and the estimator models (LitGPT's LoRA runs,
    # torchtune's LoRA and full 7B): predicted / published spans 0.79-0.95 today.
    modelled = [r["run"] for r in measured if not r["not_modelled"] and not r["assumed"]]
    assert len(modelled) >= 5
    assert all(1 / 1.3 <= ratio[run] <= 1.3 for run in modelled), {r: ratio[r] for r in modelled}
    # Every measured run, the partly modelled ones too: 0.76-3.52 today.
    assert all(1 / 3.6 <= x <= 3.6 for x in ratio.values()), ratio
    # and off the way the reasons say: a chunked loss never holds three fp32 copies of the logits,
    # which the estimate counts (too high); bitsandbytes < 0.43.2 kept every 4-bit layer's input
    # (too low, and lower than the LoRA run of the same table)
    for run, x in ratio.items():
        if "chunked" in rows[run]["not_modelled"]:
            assert x > 1, run
    for size in ("7B", "13B"):
        assert ratio[f"LitGPT QLoRA {size}"] < 0.85 * ratio[f"LitGPT LoRA {size}"], size
    # a bound, not a measurement: QLoRA's 65B run fits in 48 GB
    bound = rows["QLoRA paper 65B"]
    assert bound["kind"] == "fits in" and bound["predicted_gib"] < bound["published_gib"]
    # LitGPT divides by 1e9; torchtune 2024-09 by 2**30
    assert pp.PEAKS[0].reported_bytes == 21.30e9
    assert {p.model for p in pp.PEAKS} <= set(pp.SHAPES)
