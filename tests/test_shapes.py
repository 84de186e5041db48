"""Model shapes (ftlearn.shapes): parameter counts from a config, the catalogue, the one LoRA count."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from ftlearn import shapes

# A second shape beside the fixtures' default: tied embeddings, one key/value head, and a head_dim
# of 32 with 4 heads, so that q is 128 wide on a 64-wide model (o_proj reads 128).
ODD = {"tie_word_embeddings": True, "num_key_value_heads": 1, "head_dim": 32}


@pytest.mark.parametrize("overrides", [{}, ODD], ids=["default", "odd"])
def test_param_count_from_config_equals_the_model(tiny_llama, overrides):
    model = tiny_llama(**overrides)
    assert shapes.as_shape(model.config).n_params == sum(p.numel() for p in model.parameters())
    linear = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    )
    assert shapes.as_shape(model).linear_params == linear


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
    assert set(expected) == set(shapes.MODELS)
    for name, billions in expected.items():
        assert shapes.as_shape(name).n_params / 1e9 == pytest.approx(billions, rel=0.01), name
    assert shapes.as_shape(7.0).n_params / 1e9 == pytest.approx(7.0, rel=0.05)
    with pytest.raises(KeyError, match="Llama-3.1-8B"):
        shapes.as_shape("Llama-9B")


def test_llama_config_has_the_catalog_shape():
    for name in ("SmolLM2-135M", "Llama-3.1-8B"):
        shape = shapes.as_shape(shapes.llama_config(name))
        assert shape.linear_shapes() == shapes.MODELS[name].linear_shapes()
        assert shape.n_params == shapes.MODELS[name].n_params
    with torch.device("meta"):  # no memory: only the parameter count
        model = LlamaForCausalLM(shapes.llama_config("SmolLM2-135M"))
    assert sum(p.numel() for p in model.parameters()) == shapes.MODELS["SmolLM2-135M"].n_params


@pytest.mark.parametrize("overrides", [{}, ODD], ids=["default", "odd"])
@pytest.mark.parametrize(
    "targets", ["all-linear", "attention", ["q_proj", "v_proj"], ["k_proj", "down_proj"]]
)
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lora_params_equal_peft_on_a_random_llama(tiny_llama, overrides, targets, dora):
    model = tiny_llama(**overrides)
    names = shapes.resolve_targets(targets)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=names, use_dora=dora)
    peft_count = get_peft_model(model, config).get_nb_trainable_parameters()[0]
    assert shapes.lora_params(model.config, 4, targets, dora=dora) == peft_count
    assert shapes.lora_params(model, 4, targets, dora=dora) == peft_count  # a model: its config


def test_lora_params_by_hand(tiny_config):
    # Per layer with r=4: q and o 4*(64+64)=512 each, k and v 4*(64+32)=384 each;
    # gate, up and down 4*(64+128)=768 each. Two layers.
    config = tiny_config()
    assert shapes.lora_params(config, 4, "attention") == 2 * (512 + 384 + 384 + 512) == 3584
    assert shapes.lora_params(config, 4, "all-linear") == 3584 + 2 * 3 * 768 == 8192
    assert shapes.lora_params(config, 8, ["q_proj", "q_proj"]) == 2 * 8 * 128  # counted once
    with pytest.raises(ValueError, match="q_proj"):
        shapes.lora_params(config, 4, ["query"])
    with pytest.raises(ValueError, match="all-linear"):
        shapes.lora_params(config, 4, "mlp")


def test_one_list_of_llama_linears():
    # profiles.py still spells the list out (its lead-owned line): the two must not drift apart
    from ftlearn.profiles import LLAMA_LINEAR

    assert shapes.LLAMA_LINEAR == LLAMA_LINEAR
    assert shapes.fmt_params(8_030_000_000) == "8.03B" and shapes.fmt_params(135e6) == "135.0M"
