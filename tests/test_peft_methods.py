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
    assert peft.__version__.startswith("0.21"), "new peft: re-check BOTTLENECK_ADAPTERS_NOTE"
    names = {t.name for t in peft.PeftType}
    assert {"ADAPTION_PROMPT", "SHADOW"} <= names
    assert not any(
        word in n for n in names for word in ("ADAPTER", "HOULSBY", "PFEIFFER", "BOTTLENECK")
    )
    assert "ADAPTION_PROMPT" in BOTTLENECK_ADAPTERS_NOTE and "SHADOW" in BOTTLENECK_ADAPTERS_NOTE
