"""LoRA from scratch (ftlearn.lora) against peft: same weights in, same outputs out."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from ftlearn import lora
from ftlearn.lora import LoRALinear
from ftlearn.profiles import LLAMA_LINEAR, get

# Two layers of width 64 with grouped-query attention (k and v are 32 wide), so that in + out
# differs between q, k and the MLP: a count that mixed them up would not add up.
CONFIG = LlamaConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
R, ALPHA = 4, 8  # scaling 2, not 1: a forgotten or inverted scaling shows in the outputs


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(CONFIG).eval()


def input_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed)
    )


def ours_and_peft(targets, r: int = R, alpha: float = ALPHA):
    """The same base three times: plain, with our LoRA, with peft's, our A and B copied from peft's."""
    base = tiny_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, targets, r, alpha)
    # init_lora_weights=False leaves B random (peft's switch for tests): a zero B would hide any bug
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        target_modules=lora.resolve_targets(targets),
        init_lora_weights=False,
    )
    theirs = get_peft_model(copy.deepcopy(base), config).eval()
    lora.copy_from_peft(ours, theirs)
    return base, ours, theirs


def test_layer_matches_peft_layer():
    base, ours, theirs = ours_and_peft(["q_proj", "v_proj"])
    our_layer = ours.model.layers[0].self_attn.v_proj
    peft_layer = theirs.get_base_model().model.layers[0].self_attn.v_proj
    assert (
        isinstance(our_layer, LoRALinear)
        and our_layer.scaling == peft_layer.scaling["default"] == 2
    )
    x = torch.randn(3, 5, CONFIG.hidden_size)
    with torch.no_grad():
        expected = peft_layer(x)
        torch.testing.assert_close(our_layer(x), expected, atol=1e-6, rtol=0)
        # the LoRA path really contributes, so the equality above means something
        assert (expected - base.model.layers[0].self_attn.v_proj(x)).abs().max() > 1e-2


@pytest.mark.parametrize("targets", ["attention", "all-linear"])
def test_model_logits_match_peft(targets):
    base, ours, theirs = ours_and_peft(targets)
    ids = input_ids()
    assert lora.max_abs_logit_diff(ours, theirs, ids) < 1e-5
    assert lora.max_abs_logit_diff(ours, base, ids) > 1e-2


def test_wrong_scaling_is_caught():
    # The comparison above can fail: double our scaling and the logits move away from peft's.
    _, ours, theirs = ours_and_peft("attention")
    for module in ours.modules():
        if isinstance(module, LoRALinear):
            module.scaling *= 2
    assert lora.max_abs_logit_diff(ours, theirs, input_ids()) > 1e-2


def test_zero_B_starts_as_the_base_model():
    base = tiny_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, "all-linear", r=R, alpha=ALPHA)
    layer = ours.model.layers[1].mlp.down_proj
    assert torch.all(layer.lora_B == 0) and layer.lora_A.abs().sum() > 0
    assert lora.max_abs_logit_diff(ours, base, input_ids()) == 0.0  # exactly, not approximately


def test_inject_freezes_the_rest_and_only_adapters_get_gradients():
    model = tiny_llama()
    names = lora.inject_lora(model, ["q_proj", "v_proj"], r=R, alpha=ALPHA, dropout=0.1)
    assert names == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    model.train()
    ids = input_ids()
    model(input_ids=ids, labels=ids).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {f"{n}.lora_{m}" for n in names for m in "AB"}
    assert isinstance(model.model.layers[0].self_attn.q_proj.dropout, nn.Dropout)


def test_inject_with_no_match_names_the_linear_layers():
    with pytest.raises(ValueError, match=r"No nn.Linear named \['query'\].*'gate_proj'"):
        lora.inject_lora(tiny_llama(), ["query"], r=R, alpha=ALPHA)


@pytest.mark.parametrize("targets", ["attention", "all-linear", ["q_proj", "v_proj"]])
def test_three_parameter_counts_agree(targets):
    base, ours, theirs = ours_and_peft(targets)
    formula = lora.lora_param_count_formula(base, targets, R)
    assert formula == lora.lora_param_count_formula(CONFIG, targets, R)  # from the config alone
    assert formula == lora.count_trainable(ours) == lora.peft_trainable(theirs)
    assert lora.trainable_report(ours) == {
        "trainable": formula,
        "total": theirs.get_nb_trainable_parameters()[1],
        "percent": pytest.approx(100 * formula / lora.trainable_report(ours)["total"]),
    }


def test_parameter_count_of_an_injected_model_is_an_error_not_zero():
    model = tiny_llama()
    lora.inject_lora(model, "attention", r=R, alpha=ALPHA)  # q_proj is a LoRALinear now
    with pytest.raises(ValueError, match="Its linear layers are named"):
        lora.lora_param_count_formula(model, "attention", R)


def test_parameter_count_by_hand():
    # Per layer with r=4: q and o 4*(64+64)=512 each, k and v 4*(64+32)=384 each;
    # gate, up and down 4*(64+128)=768 each. Two layers.
    assert (
        lora.lora_param_count_formula(CONFIG, "attention", 4) == 2 * (512 + 384 + 384 + 512) == 3584
    )
    assert lora.lora_param_count_formula(CONFIG, "all-linear", 4) == 3584 + 2 * 3 * 768 == 8192


def test_our_merge_keeps_the_logits_and_removes_lora():
    _, ours, theirs = ours_and_peft("all-linear")
    ids = input_ids()
    before = copy.deepcopy(ours)
    merged = lora.merge_lora(ours)
    assert lora.max_abs_logit_diff(merged, before, ids) < 1e-5
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert type(merged.model.layers[0].mlp.up_proj) is nn.Linear
    assert lora.max_abs_logit_diff(merged, theirs.merge_and_unload(), ids) < 1e-5


def test_peft_merge_and_unload_keeps_the_logits():
    _, _, theirs = ours_and_peft("attention")
    ids = input_ids()
    with torch.no_grad():
        before = theirs(input_ids=ids).logits
    merged = theirs.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, before, atol=1e-5, rtol=0)


def test_lora_config_defaults_and_options():
    config = lora.lora_config()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)
    assert config.task_type == "CAUSAL_LM"
    assert config.target_modules == set(LLAMA_LINEAR)  # peft turns the list into a set
    assert lora.lora_config(attention_only=True).target_modules == set(lora.ATTENTION)
    assert lora.lora_config(targets=["q_proj"], r=2).target_modules == {"q_proj"}
    tiny = get("tiny")
    assert (lora.lora_config(tiny).r, lora.lora_config(tiny).lora_alpha) == (
        tiny.lora_r,
        tiny.lora_alpha,
    )
    assert lora.lora_config(use_rslora=True).use_rslora
    with pytest.raises(ValueError, match="not both"):
        lora.lora_config(targets="attention", attention_only=True)
    with pytest.raises(ValueError, match="all-linear"):
        lora.lora_config(targets="mlp")
    with pytest.raises(TypeError, match="use_dora"):
        lora.lora_config(use_dorra=True)


def test_sizes_on_disk_and_optimizer_state(tmp_path):
    base, _, theirs = ours_and_peft("attention")
    base.save_pretrained(tmp_path / "model")
    theirs.save_pretrained(tmp_path / "adapter")
    adapter_mb = lora.adapter_size_mb(tmp_path / "adapter")
    # the adapter file is its fp32 weights plus a small header and adapter_config.json
    assert 3584 * 4 / 1e6 < adapter_mb < 3584 * 4 / 1e6 + 0.01
    model_mb = lora.model_size_mb(tmp_path / "model")
    assert base.num_parameters() * 4 / 1e6 < model_mb < base.num_parameters() * 4 / 1e6 + 0.01
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.adapter_size_mb(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        lora.model_size_mb(tmp_path / "missing")
    assert lora.optimizer_state_bytes(theirs) == 8 * 3584
    assert lora.optimizer_state_bytes(theirs, "sgd") == 0
    with pytest.raises(ValueError, match="adamw"):
        lora.optimizer_state_bytes(theirs, "lion")


def test_logit_diff_restores_training_mode():
    a, b = tiny_llama().train(), tiny_llama()
    assert lora.max_abs_logit_diff(a, b, input_ids()) == 0.0
    assert a.training and not b.training
