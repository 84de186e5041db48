"""LoRA from scratch (ftlearn.lora) against peft: same weights in, same outputs out."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from ftlearn import lora
from ftlearn.lora import LoRALinear
from ftlearn.profiles import get
from ftlearn.shapes import ATTENTION, LLAMA_LINEAR, resolve_targets

# The fixtures' tiny Llama: two layers of width 64, k and v 32 wide (tests/conftest.py).
R, ALPHA = 4, 8  # scaling 2, not 1: a forgotten or inverted scaling shows in the outputs


def input_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(seed))


def ours_and_peft(tiny_llama, targets, r: int = R, alpha: float = ALPHA):
    """The same base three times: plain, with our LoRA, with peft's, our random A and B copied in."""
    base = tiny_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, targets, r, alpha)
    draws = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a random B (training would make one): a zero B would hide any bug
        for module in ours.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(0, 0.5, generator=draws)
    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha,
                        target_modules=resolve_targets(targets))  # fmt: skip
    theirs = get_peft_model(copy.deepcopy(base), config).eval()
    lora.copy_to_peft(ours, theirs)
    return base, ours, theirs


def test_layer_matches_peft_layer(tiny_llama):
    base, ours, theirs = ours_and_peft(tiny_llama, ["q_proj", "v_proj"])
    our_layer = ours.model.layers[0].self_attn.v_proj
    peft_layer = theirs.get_base_model().model.layers[0].self_attn.v_proj
    assert (
        isinstance(our_layer, LoRALinear)
        and our_layer.scaling == peft_layer.scaling["default"] == 2
    )
    x = torch.randn(3, 5, base.config.hidden_size)
    with torch.no_grad():
        expected = peft_layer(x)
        torch.testing.assert_close(our_layer(x), expected, atol=1e-6, rtol=0)
        # the LoRA path really contributes, so the equality above means something
        assert (expected - base.model.layers[0].self_attn.v_proj(x)).abs().max() > 1e-2


@pytest.mark.parametrize("targets", ["attention", "all-linear"])
def test_model_logits_match_peft(tiny_llama, targets):
    base, ours, theirs = ours_and_peft(tiny_llama, targets)
    ids = input_ids()
    assert lora.max_abs_logit_diff(ours, theirs, ids) < 1e-5
    assert lora.max_abs_logit_diff(ours, base, ids) > 1e-2


def test_wrong_scaling_is_caught(tiny_llama):
    # The comparison above can fail: double our scaling and the logits move away from peft's.
    _, ours, theirs = ours_and_peft(tiny_llama, "attention")
    for module in ours.modules():
        if isinstance(module, LoRALinear):
            module.scaling *= 2
    assert lora.max_abs_logit_diff(ours, theirs, input_ids()) > 1e-2


def test_zero_B_starts_as_the_base_model(tiny_llama):
    base = tiny_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, "all-linear", r=R, alpha=ALPHA)
    layer = ours.model.layers[1].mlp.down_proj
    assert torch.all(layer.lora_B == 0) and layer.lora_A.abs().sum() > 0
    assert lora.max_abs_logit_diff(ours, base, input_ids()) == 0.0  # exactly, not approximately


def test_inject_freezes_the_rest_and_only_adapters_get_gradients(tiny_llama):
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


def test_inject_with_no_match_names_the_linear_layers(tiny_llama):
    with pytest.raises(ValueError, match=r"No nn.Linear named \['query'\].*'gate_proj'"):
        lora.inject_lora(tiny_llama(), ["query"], r=R, alpha=ALPHA)


@pytest.mark.parametrize("targets", ["attention", "all-linear", ["q_proj", "v_proj"]])
def test_three_parameter_counts_agree(tiny_llama, targets):
    # 04's three counts: the formula from the shape, requires_grad in our model, peft's own report
    from ftlearn.shapes import lora_params

    base, ours, theirs = ours_and_peft(tiny_llama, targets)
    formula = lora_params(base.config, R, targets)
    assert formula == lora.count_trainable(ours) == lora.peft_trainable(theirs)
    assert lora.trainable_report(ours) == {
        "trainable": formula,
        "total": theirs.get_nb_trainable_parameters()[1],
        "percent": pytest.approx(100 * formula / lora.trainable_report(ours)["total"]),
    }


def test_our_merge_keeps_the_logits_and_removes_lora(tiny_llama):
    _, ours, theirs = ours_and_peft(tiny_llama, "all-linear")
    ids = input_ids()
    before = copy.deepcopy(ours)
    merged = lora.merge_lora(ours)
    assert lora.max_abs_logit_diff(merged, before, ids) < 1e-5
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert type(merged.model.layers[0].mlp.up_proj) is nn.Linear
    assert lora.max_abs_logit_diff(merged, theirs.merge_and_unload(), ids) < 1e-5


def test_peft_merge_and_unload_keeps_the_logits(tiny_llama):
    _, _, theirs = ours_and_peft(tiny_llama, "attention")
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
    assert lora.lora_config(attention_only=True).target_modules == set(ATTENTION)
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


def test_sizes_on_disk(tiny_llama, tmp_path):
    from ftlearn.estimator import MiB

    base, _, theirs = ours_and_peft(tiny_llama, "attention")
    base.save_pretrained(tmp_path / "model")
    theirs.save_pretrained(tmp_path / "adapter")
    adapter_mib = lora.adapter_size_mib(tmp_path / "adapter")
    # the adapter file is its fp32 weights plus a small header and adapter_config.json
    assert 3584 * 4 / MiB < adapter_mib < 3584 * 4 / MiB + 0.01
    model_mib = lora.model_size_mib(tmp_path / "model")
    assert base.num_parameters() * 4 / MiB < model_mib < base.num_parameters() * 4 / MiB + 0.01
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.adapter_size_mib(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        lora.model_size_mib(tmp_path / "missing")


def test_logit_diff_restores_training_mode(tiny_llama):
    a, b = tiny_llama().train(), tiny_llama()
    assert lora.max_abs_logit_diff(a, b, input_ids()) == 0.0
    assert a.training and not b.training


def test_copy_to_peft_gives_peft_our_weights(tiny_llama):
    base = tiny_llama()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, "all-linear", R, ALPHA)
    with torch.no_grad():  # train-like weights: B no longer zero
        for module in ours.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_()
    theirs = get_peft_model(
        copy.deepcopy(base), lora.lora_config(r=R, alpha=ALPHA, targets="all-linear")
    )
    assert lora.max_abs_logit_diff(ours, theirs, input_ids()) > 1e-2  # peft's B is still zero
    names = lora.copy_to_peft(ours, theirs)
    assert len(names) == 2 * 7
    assert lora.max_abs_logit_diff(ours, theirs, input_ids()) < 1e-5


def test_adapters_stay_fp32_on_a_half_precision_base():
    layer = LoRALinear(nn.Linear(8, 4).to(torch.bfloat16), r=2, alpha=4)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32  # as peft's default
    assert layer(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_weight_deltas_and_energy_rank(tiny_llama):
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    u, v = torch.randn(64, 2), torch.randn(2, 64)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight += u @ v  # a rank-2 change
    deltas = lora.weight_deltas(before, model, ["q_proj"])
    assert set(deltas) == {f"model.layers.{i}.self_attn.q_proj" for i in range(2)}
    assert deltas["model.layers.1.self_attn.q_proj"].abs().max() == 0
    s = torch.linalg.svdvals(deltas["model.layers.0.self_attn.q_proj"])
    assert lora.energy_rank(s, 0.999) == 2
    assert lora.energy_rank(torch.tensor([3.0, 0.0, 0.0])) == 1
    assert lora.energy_rank(torch.ones(10), 0.9) == 9  # a flat spectrum needs 90% of its directions


def test_copy_to_peft_takes_any_layer_with_lora_parameters(tiny_llama):
    class MyLoRA(nn.Module):  # a learner's own layer, as 04_lora writes it: same parameter names
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base = base
            self.lora_A = nn.Parameter(torch.randn(R, base.in_features))
            self.lora_B = nn.Parameter(torch.randn(base.out_features, R))

    model = tiny_llama()
    model.model.layers[0].self_attn.q_proj = MyLoRA(model.model.layers[0].self_attn.q_proj)
    theirs = get_peft_model(tiny_llama(), lora.lora_config(r=R, alpha=ALPHA, targets=["q_proj"]))
    assert lora.copy_to_peft(model, theirs) == ["model.layers.0.self_attn.q_proj"]
    peft_layer = theirs.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(
        peft_layer.lora_B["default"].weight, model.model.layers[0].self_attn.q_proj.lora_B
    )
    with pytest.raises(ValueError, match="no LoRA layer"):
        lora.copy_to_peft(tiny_llama(), theirs)


def test_update_ranks_finds_a_planted_low_rank_change(tiny_llama):
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight += torch.randn(128, 3) @ torch.randn(3, 64)
    table = lora.update_ranks(before, model, ["up_proj", "q_proj"], shares=(0.999,))
    row = table.loc["layers.1.mlp.up_proj"]
    assert (row["module"], row["shape"], row["full rank"]) == ("up_proj", (128, 64), 64)
    assert row["rank holding 100%"] == 3  # 99.9% rounds to 100% in the column name
    assert len(table) == 4


def test_merge_lora_takes_a_learners_own_layer(tiny_llama):
    class MyLoRA(nn.Module):  # 04_lora's own LoRALinear: base, lora_A, lora_B, scaling
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base, self.scaling = base, 3.0
            self.lora_A = nn.Parameter(torch.randn(R, base.in_features))
            self.lora_B = nn.Parameter(torch.randn(base.out_features, R))

        def forward(self, x):
            return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T

    model = tiny_llama()
    model.model.layers[0].self_attn.q_proj = MyLoRA(model.model.layers[0].self_attn.q_proj)
    before = copy.deepcopy(model)
    merged = lora.merge_lora(model)
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear
    assert lora.max_abs_logit_diff(merged, before, input_ids()) < 1e-5
    assert lora.max_abs_logit_diff(merged, tiny_llama(), input_ids()) > 1e-2  # the merge did move W


def test_lora_cost_counts_scales_and_sizes():
    from ftlearn.estimator import MiB
    from ftlearn.shapes import MODELS

    # Mistral-7B, r=8, every linear layer: 32 layers x 8 x (2 x 8192 + 2 x 5120 + 3 x 18432)
    cost = lora.lora_cost("Mistral-7B", 8, 16)
    assert cost["trainable"] == 32 * 8 * (2 * 8192 + 2 * 5120 + 3 * 18432) == 20_971_520
    assert cost["adapter_mib"] == 80.0 and cost["training_mib"] == 320.0  # 4 and 16 bytes each
    n = MODELS["Mistral-7B"].n_params
    assert cost["trainable_percent"] == pytest.approx(100 * 20_971_520 / (n + 20_971_520))
    assert (
        cost["scaling"] == 2 and lora.lora_cost("Mistral-7B", 16, 16, rslora=True)["scaling"] == 4
    )
    assert (
        lora.lora_cost("Mistral-7B", 8, 64)["trainable"] == cost["trainable"]
    )  # alpha: no parameter
    assert lora.lora_cost("Mistral-7B", 8, 16, ["q_proj", "v_proj"])["adapter_mib"] == (
        32 * 8 * (8192 + 5120) * 4 / MiB
    )
    with pytest.raises(ValueError, match="at least 1"):
        lora.lora_cost("Mistral-7B", 0, 16)


def test_lora_cost_agrees_with_peft(tiny_llama):
    base = tiny_llama()
    theirs = get_peft_model(base, lora.lora_config(r=R, alpha=ALPHA, targets="all-linear"))
    assert lora.lora_cost(base.config, R, ALPHA)["trainable"] == lora.peft_trainable(theirs)


def test_lora_widget_shows_a_static_table_first(capsys, monkeypatch):
    from ftlearn.shapes import MODELS

    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    control = lora.lora_widget({"Mistral-7B": MODELS["Mistral-7B"]})
    (table,) = shown
    assert table.loc[("Mistral-7B", "all linear layers (QLoRA)", 16), "adapter_mib"] == 160.0
    assert len(table) == 6 and "static" not in repr(control) and "table above" in repr(control)
