"""The PEFT family (ftlearn.peft_methods): each config wraps a tiny Llama and trains only its adapter."""

from __future__ import annotations

import peft
import pytest
import torch
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

from ftlearn.peft_methods import BOTTLENECK_ADAPTERS_NOTE, METHODS, peft_config

# Trainable parameters on the fixtures' tiny Llama (tests/conftest.py: width 64, k and v 32 wide,
# MLP 128), worked out by hand (2 layers; r=4 for the LoRA family).
EXPECTED = {
    "lora": 8192,  # per layer 4*(128+96+96+128) + 3*4*(64+128) = 4096
    "dora": 9216,  # LoRA + one magnitude per output: 64+32+32+64+128+128+64 = 512 a layer
    "ia3": 384,  # per layer k 32 + v 32 + down_proj's input 128
    "prompt_tuning": 512,  # 8 virtual tokens x 64
    # through its projection, at the key/value width 32: embeddings 8 x 32, Linear(32, 32) and
    # Linear(32, 2 layers x (key 32 + value 32) = 128), with biases: 256 + 1,056 + 4,224
    "prefix_tuning": 5536,
}
TYPES = {
    "lora": LoraConfig,
    "dora": LoraConfig,
    "ia3": IA3Config,
    "prompt_tuning": PromptTuningConfig,
    "prefix_tuning": PrefixTuningConfig,
}


def overrides(method: str) -> dict:
    return {"r": 4} if method in ("lora", "dora") else {}


def test_methods_are_described_and_counted():
    assert set(METHODS) == set(EXPECTED) == set(TYPES)


@pytest.mark.parametrize("method", list(METHODS))
def test_config_type(method):
    config = peft_config(method)
    assert type(config) is TYPES[method] and config.task_type == "CAUSAL_LM"
    if isinstance(config, LoraConfig):
        assert config.use_dora == (method == "dora")
    if method == "prompt_tuning":  # vocabulary init: peft's RANDOM draws N(0, 1), far off-scale
        assert config.prompt_tuning_init == "SAMPLE_VOCAB"
    if method == "prefix_tuning":  # Li & Liang's reparametrisation
        assert config.prefix_projection


def test_prompt_tuning_starts_from_the_task_text_with_a_profile():
    from transformers import AutoTokenizer

    from ftlearn.models import resolve
    from ftlearn.peft_methods import PROMPT_INIT_TEXT, VIRTUAL_TOKENS, config_for
    from ftlearn.profiles import get

    config = config_for("prompt_tuning", get("tiny"))
    assert (
        config.prompt_tuning_init == "TEXT" and config.prompt_tuning_init_text == PROMPT_INIT_TEXT
    )
    tok = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path)
    assert config.tokenizer_name_or_path == resolve(get("tiny"), "base")
    # exactly one token a virtual token: peft neither cuts the text nor repeats it
    assert len(tok(PROMPT_INIT_TEXT)["input_ids"]) == VIRTUAL_TOKENS


@pytest.mark.parametrize("method", list(METHODS))
def test_one_step_trains_only_the_adapter(tiny_llama, method):
    model = get_peft_model(tiny_llama().train(), peft_config(method, **overrides(method)))
    assert model.get_nb_trainable_parameters()[0] == EXPECTED[method]
    ids = torch.randint(0, 256, (2, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    # (LoRA's A gets a zero gradient at step 0, since B = 0; B's is not.)
    assert any(model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)


def test_alias_and_overrides():
    assert peft_config("Prompt-Tuning", num_virtual_tokens=4).num_virtual_tokens == 4
    attention = {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert peft_config("lora", targets="attention").target_modules == attention
    # overriding IA3's targets keeps feedforward_modules a subset of them, as peft requires
    ia3 = peft_config("ia3", target_modules=["k_proj", "v_proj"])
    assert ia3.feedforward_modules == set()
    with pytest.raises(TypeError, match="num_virtual_tokens"):
        peft_config("prefix_tuning", num_virtual_token=4)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="houlsby.*lora, dora, ia3, prompt_tuning, prefix_tuning"):
        peft_config("houlsby")


def test_bottleneck_note_matches_installed_peft():
    # Each claim of BOTTLENECK_ADAPTERS_NOTE, checked on the installed peft (not its version number)
    import dataclasses

    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    names = {t.name for t in peft.PeftType}
    assert not any(  # "no member of peft.PeftType is one": a new bottleneck method fails here
        word in n for n in names for word in ("ADAPTER", "HOULSBY", "PFEIFFER", "BOTTLENECK")
    )
    assert {"ADAPTION_PROMPT", "SHADOW"} <= names  # the two relatives the note names
    assert set(TRANSFORMERS_MODEL_CONFIG) == {
        "llama",
        "mistral",
        "gpt2",
    }  # "for llama, mistral and gpt2"
    shadow = {f.name for f in dataclasses.fields(peft.ShadowConfig)}
    assert "r" in shadow and "low-rank injection bottleneck" in peft.ShadowConfig.__doc__
    assert "ADAPTION_PROMPT" in BOTTLENECK_ADAPTERS_NOTE and "SHADOW" in BOTTLENECK_ADAPTERS_NOTE


@pytest.mark.parametrize("method", list(METHODS))
def test_config_for_reads_the_profile_and_marks_only_adapters(tiny_llama, method):
    from ftlearn.peft_methods import LR_SCALE, config_for, foreign_trainable, learning_rate
    from ftlearn.profiles import get

    tiny = get("tiny")
    config = config_for(method, tiny)
    if isinstance(config, LoraConfig):
        assert (config.r, config.lora_alpha) == (tiny.lora_r, tiny.lora_alpha)
        assert config.target_modules == set(tiny.lora_targets)
    assert learning_rate(method, tiny) == tiny.lora_learning_rate * LR_SCALE[method]
    model = get_peft_model(tiny_llama(), peft_config(method, **overrides(method)))
    assert foreign_trainable(model, method) == []
    next(p for p in model.parameters() if not p.requires_grad).requires_grad_(True)  # a base weight
    assert foreign_trainable(model, method) != []


def test_learning_rate_of_an_unknown_method():
    from ftlearn.peft_methods import learning_rate
    from ftlearn.profiles import get

    with pytest.raises(ValueError, match="Valid methods"):
        learning_rate("houlsby", get("tiny"))


@pytest.mark.parametrize("method", list(METHODS))
def test_expected_trainable_is_the_hand_count_and_peft_count(tiny_llama, method):
    from ftlearn.peft_methods import expected_trainable

    model = tiny_llama()
    assert expected_trainable(method, model.config, **overrides(method)) == EXPECTED[method]
    model = get_peft_model(model, peft_config(method, **overrides(method)))
    assert model.get_nb_trainable_parameters()[0] == EXPECTED[method]


def test_expected_trainable_follows_the_options(tiny_config):
    from ftlearn.peft_methods import expected_trainable

    config = tiny_config()
    assert expected_trainable("prompt_tuning", config, num_virtual_tokens=3) == 3 * 64
    # attention only, r=2: per layer 2*(128+96+96+128) = 896
    assert expected_trainable("lora", config, r=2, targets="attention") == 2 * 896
    with pytest.raises(ValueError, match="bottleneck"):
        expected_trainable("houlsby", config)
    # prefix tuning without its projection: the keys and values alone, what it keeps either way
    from ftlearn.peft_methods import prefix_kept

    assert expected_trainable("prefix_tuning", config, prefix_projection=False) == 1024
    assert prefix_kept(config) == 1024 and prefix_kept("Llama-3.1-8B", 8) == 8 * 32 * 2 * 1024


@pytest.mark.parametrize(
    "method, options",
    [
        ("prefix_tuning", {"encoder_hidden_size": 16}),
        ("prefix_tuning", {"prefix_projection": False, "num_virtual_tokens": 3}),
        (
            "ia3",
            {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]},
        ),
    ],
)
def test_expected_trainable_options_match_peft(tiny_llama, method, options):
    from ftlearn.peft_methods import expected_trainable

    model = get_peft_model(tiny_llama(), peft_config(method, **options))
    names = {"target_modules": "targets"}  # expected_trainable's name for peft's option
    counted = expected_trainable(
        method, model.config, **{names.get(k, k): v for k, v in options.items()}
    )
    assert model.get_nb_trainable_parameters()[0] == counted


def test_sweep_rates_are_centred_on_the_method_rate():
    from ftlearn.peft_methods import learning_rate, sweep_rates
    from ftlearn.profiles import get

    tiny = get("tiny")
    assert sweep_rates("lora", tiny) == [1e-3, 3e-3, 9e-3]  # tiny's LoRA rate 3e-3, / 3 and x 3
    assert sweep_rates("ia3", tiny, 1) == [pytest.approx(learning_rate("ia3", tiny))]
    assert sweep_rates("bottleneck", tiny, 1) == [0.009]  # rounded: one rate, one key of a table
    with pytest.raises(ValueError, match="plan.py"):
        sweep_rates("lora", tiny, 2)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_merged_copy_computes_what_the_adapter_did(tiny_llama, method):
    from ftlearn.peft_methods import compare_merged, merged_copy

    model = get_peft_model(tiny_llama(), peft_config(method, **overrides(method)))
    with torch.no_grad():  # a trained-looking adapter: B != 0, scales != 1
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    merged, result = merged_copy(model)
    assert result == "merged" and not isinstance(merged, peft.PeftModel)
    assert any(p.requires_grad for p in model.parameters()), "the adapter model is left as it was"
    ids = torch.randint(0, 256, (2, 10))
    report = compare_merged(model, merged, ids, torch.ones_like(ids))
    assert report["max_abs_logit_diff"] < 1e-5 and report["same_next_token"] == 1.0
    assert report["adapter_tensors_left"] == 0
    assert report["parameters"] == tiny_llama().num_parameters()
    unmerged = compare_merged(model, tiny_llama(), ids, torch.ones_like(ids))  # the check can fail
    assert unmerged["max_abs_logit_diff"] > 1e-3


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_merged_copy_reports_why_soft_prompts_cannot_merge(tiny_llama, method):
    from ftlearn.peft_methods import merged_copy

    merged, result = merged_copy(get_peft_model(tiny_llama(), peft_config(method)))
    assert merged is None and result.startswith("AttributeError") and "merge_and_unload" in result


def test_knob_rows_and_the_static_table(tiny_llama, capsys):
    from ftlearn.peft_methods import KNOBS, knob_row, method_widget

    model = tiny_llama()
    row = knob_row("prefix_tuning", model, 8, {"prefix_tuning": (8, "5% exact match")})
    assert (row["trainable"], row["kept for inference"]) == (EXPECTED["prefix_tuning"], 1024)
    assert row["measured here"] == "5% exact match"
    assert knob_row("prefix_tuning", model, 16, {"prefix_tuning": (8, "5%")})["measured here"] == (
        "not trained here"
    )
    assert knob_row("lora", model, 4)["trainable"] == EXPECTED["lora"]
    assert knob_row("ia3", model, "k, v, down (paper)")["trainable"] == EXPECTED["ia3"]
    assert knob_row("ia3", model, "all linear")["trainable"] > EXPECTED["ia3"]
    import pandas as pd

    with pd.option_context("display.width", 300, "display.max_columns", 20):  # every column
        control = method_widget(model, "tiny", {"lora": (4, "50%")})
    shown = capsys.readouterr().out  # outside a kernel, display() prints the table's text
    assert all(m in shown for m in KNOBS) and "Llama-3.1-8B" in shown
    assert "control" in repr(control)


def test_forward_ms_times_every_model_side_by_side(tiny_llama):
    from ftlearn.experiments import forward_ms

    models = {"a": tiny_llama(), "b": tiny_llama(num_hidden_layers=4)}
    ids = torch.randint(0, 256, (1, 16))
    table = forward_ms(models, ids, torch.ones_like(ids), reps=5, warmup=1)
    assert list(table.index) == ["a", "b"] and (table["median_ms"] > 0).all()
    assert table.loc["a", "vs_first"] == 1.0
    assert (table["q25_ms"] <= table["median_ms"]).all() and (
        table["median_ms"] <= table["q75_ms"]
    ).all()


def test_seed_table_averages_over_seeds():
    from ftlearn.experiments import seed_table

    run = dict(
        trainable=10, trainable_percent=1.0, train_loss=2.0, step_ms=5.0, optimizer_state_mib=0.1
    )
    runs = {
        ("a", 0): run | {"exact_match": 1.0, "predictions": ["x", "y"]},
        ("a", 1): run | {"exact_match": 0.5, "predictions": ["x", "n"], "train_loss": 4.0},
    }
    table, per_question = seed_table(runs, ["x", "y"])
    assert table.loc["a", "exact_match"] == 0.75 and table.loc["a", "train_loss"] == 3.0
    assert (table.loc["a", "exact_match_low"], table.loc["a", "exact_match_high"]) == (0.5, 1.0)
    assert list(per_question["a"]) == [1.0, 0.5] and table.loc["a", "seeds"] == 2


@pytest.mark.parametrize("places", [("mlp",), ("self_attn", "mlp")])
def test_bottleneck_adapter_starts_as_identity_and_trains_alone(tiny_llama, places):
    from ftlearn.peft_methods import BottleneckAdapter, expected_trainable, inject_bottleneck

    base = tiny_llama()
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    names = inject_bottleneck(base, size=8, places=places)
    assert names[0] == f"model.layers.0.{places[0]}" and len(names) == 2 * len(places)
    assert isinstance(base.model.layers[1].mlp, BottleneckAdapter)
    with torch.no_grad():  # up = 0: exactly the frozen model at step 0
        assert torch.equal(base(input_ids=ids).logits, expected)
    # per adapter: down 64*8 + 8, up 8*64 + 64 = 1096
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    assert trainable == expected_trainable("bottleneck", base.config, size=8, places=places)
    assert trainable == 1096 * 2 * len(places)
    base.train()
    base(input_ids=ids, labels=ids).loss.backward()
    with_grad = {n for n, p in base.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in base.named_parameters() if p.requires_grad}
    assert all(".down." in n or ".up." in n for n in with_grad)


def test_bottleneck_on_a_model_without_decoder_layers_says_why(tiny_config):
    from ftlearn.peft_methods import inject_bottleneck

    class NotLlama(torch.nn.Module):
        config = tiny_config()

        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match="Llama-shaped"):
        inject_bottleneck(NotLlama(), size=2)


def test_plot_methods_has_three_panels():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from ftlearn.peft_methods import plot_methods

    table = pd.DataFrame(
        {
            "trainable": [512, 8192],
            "exact_match": [0.1, 0.9],
            "peak_mib": [5, 7],
            "step_ms": [9, 12],
        },
        index=["prompt_tuning", "lora"],
    )
    fig = plot_methods(table, "methods")
    assert len(fig.axes) == 3 and fig.axes[2].get_xlabel() == "ms"
    assert fig.axes[1].get_title() == "peak memory (MiB)" and fig._suptitle.get_text() == "methods"


def test_plot_sweep_draws_a_line_per_method():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from ftlearn.peft_methods import plot_sweep

    sweep = pd.DataFrame({1e-3: [0.1, None], 3e-3: [0.5, 0.2], 9e-3: [None, 0.3]}, index=["a", "b"])
    fig = plot_sweep(sweep, "sweep")
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_xscale() == "log"


def test_a_merged_copy_of_a_trl_trained_model_computes_with_its_own_weights(tiny_llama):
    # TRL's fused LM head patches `forward` on the instance through a closure: a deep copy kept
    # calling the original, so a "merged" copy ran the unmerged adapters (07's latency, 2026-12-01).
    import copy

    from peft import LoraConfig, get_peft_model

    from ftlearn.compat import add_trl_fused_lm_head, remove_trl_forward_patch
    from ftlearn.peft_methods import merged_copy

    model = tiny_llama()
    add_trl_fused_lm_head(model)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    stale = copy.deepcopy(peft).merge_and_unload()
    with torch.no_grad():
        peft.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.mul_(0)  # the original moves
        unmerged_now = peft(input_ids=ids).logits
        assert torch.equal(stale(input_ids=ids).logits, unmerged_now), "the bug: the copy ran the original"
        merged, _ = merged_copy(peft)
        peft.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.add_(1)
        assert not torch.allclose(merged(input_ids=ids).logits, peft(input_ids=ids).logits), "the merged copy is its own"
    assert remove_trl_forward_patch(model) == 1, "merged_copy removed it on the copy; the original kept its own"
