"""The PEFT family (ftlearn.peft_methods): each config wraps a tiny Llama and trains only its adapter."""

from __future__ import annotations

import peft
import pytest
import torch
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from ftlearn.peft_methods import BOTTLENECK_ADAPTERS_NOTE, METHODS, peft_config

CONFIG = LlamaConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)  # k and v are 32 wide

# Trainable parameters on CONFIG, worked out by hand (2 layers; r=4 for the LoRA family).
EXPECTED = {
    "lora": 8192,  # per layer 4*(128+96+96+128) + 3*4*(64+128) = 4096
    "dora": 9216,  # LoRA + one magnitude per output: 64+32+32+64+128+128+64 = 512 a layer
    "ia3": 384,  # per layer k 32 + v 32 + down_proj's input 128
    "prompt_tuning": 512,  # 8 virtual tokens x 64
    "prefix_tuning": 1024,  # 8 tokens x 2 layers x (key 32 + value 32)
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


@pytest.mark.parametrize("method", list(METHODS))
def test_one_step_trains_only_the_adapter(method):
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(CONFIG), peft_config(method, **overrides(method)))
    assert model.get_nb_trainable_parameters()[0] == EXPECTED[method]
    ids = torch.randint(0, CONFIG.vocab_size, (2, 10))
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
    assert set(TRANSFORMERS_MODEL_CONFIG) == {"llama", "mistral", "gpt2"}  # "for llama, mistral and gpt2"
    shadow = {f.name for f in dataclasses.fields(peft.ShadowConfig)}
    assert "r" in shadow and "low-rank injection bottleneck" in peft.ShadowConfig.__doc__
    assert "ADAPTION_PROMPT" in BOTTLENECK_ADAPTERS_NOTE and "SHADOW" in BOTTLENECK_ADAPTERS_NOTE


@pytest.mark.parametrize("method", list(METHODS))
def test_config_for_reads_the_profile_and_marks_only_adapters(method):
    from ftlearn.peft_methods import LR_SCALE, config_for, foreign_trainable, learning_rate
    from ftlearn.profiles import get

    tiny = get("tiny")
    config = config_for(method, tiny)
    if isinstance(config, LoraConfig):
        assert (config.r, config.lora_alpha) == (tiny.lora_r, tiny.lora_alpha)
        assert config.target_modules == set(tiny.lora_targets)
    assert learning_rate(method, tiny) == tiny.lora_learning_rate * LR_SCALE[method]
    model = get_peft_model(LlamaForCausalLM(CONFIG), peft_config(method, **overrides(method)))
    assert foreign_trainable(model, method) == []
    next(p for p in model.parameters() if not p.requires_grad).requires_grad_(True)  # a base weight
    assert foreign_trainable(model, method) != []


def test_learning_rate_of_an_unknown_method():
    from ftlearn.peft_methods import learning_rate
    from ftlearn.profiles import get

    with pytest.raises(ValueError, match="Valid methods"):
        learning_rate("houlsby", get("tiny"))


@pytest.mark.parametrize("method", list(METHODS))
def test_expected_trainable_is_the_hand_count_and_peft_count(method):
    from ftlearn.peft_methods import expected_trainable

    assert expected_trainable(method, CONFIG, **overrides(method)) == EXPECTED[method]
    model = get_peft_model(LlamaForCausalLM(CONFIG), peft_config(method, **overrides(method)))
    assert model.get_nb_trainable_parameters()[0] == EXPECTED[method]


def test_expected_trainable_follows_the_options():
    from ftlearn.peft_methods import expected_trainable

    assert expected_trainable("prompt_tuning", CONFIG, num_virtual_tokens=3) == 3 * 64
    # attention only, r=2: per layer 2*(128+96+96+128) = 896
    assert expected_trainable("lora", CONFIG, r=2, targets="attention") == 2 * 896
    with pytest.raises(ValueError, match="bottleneck"):
        expected_trainable("houlsby", CONFIG)


@pytest.mark.parametrize("places", [("mlp",), ("self_attn", "mlp")])
def test_bottleneck_adapter_starts_as_identity_and_trains_alone(places):
    from ftlearn.peft_methods import BottleneckAdapter, expected_trainable, inject_bottleneck

    torch.manual_seed(0)
    base = LlamaForCausalLM(CONFIG).eval()
    ids = torch.randint(0, CONFIG.vocab_size, (2, 10))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    names = inject_bottleneck(base, size=8, places=places)
    assert names[0] == f"model.layers.0.{places[0]}" and len(names) == 2 * len(places)
    assert isinstance(base.model.layers[1].mlp, BottleneckAdapter)
    with torch.no_grad():  # up = 0: exactly the frozen model at step 0
        assert torch.equal(base(input_ids=ids).logits, expected)
    # per adapter: down 64*8 + 8, up 8*64 + 64 = 1096
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    assert trainable == expected_trainable("bottleneck", CONFIG, size=8, places=places)
    assert trainable == 1096 * 2 * len(places)
    base.train()
    base(input_ids=ids, labels=ids).loss.backward()
    with_grad = {n for n, p in base.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in base.named_parameters() if p.requires_grad}
    assert all(".down." in n or ".up." in n for n in with_grad)


def test_bottleneck_on_a_model_without_decoder_layers_says_why():
    from ftlearn.peft_methods import inject_bottleneck

    class NotLlama(torch.nn.Module):
        config = CONFIG

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
            "exact match": [0.1, 0.9],
            "peak MB": [5, 7],
            "step ms": [9, 12],
        },
        index=["prompt_tuning", "lora"],
    )
    fig = plot_methods(table, "methods")
    assert len(fig.axes) == 3 and fig.axes[2].get_xlabel() == "step ms"
