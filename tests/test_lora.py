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


def test_copy_to_peft_gives_peft_our_weights():
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


def test_adamw_state_bytes_measures_what_optimizer_state_bytes_predicts():
    _, _, theirs = ours_and_peft("attention")
    optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad])
    assert lora.adamw_state_bytes(optimizer) == 0  # AdamW makes its state on the first step
    ids = input_ids()
    theirs(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert lora.adamw_state_bytes(optimizer) == lora.optimizer_state_bytes(theirs) == 8 * 3584


def test_weight_deltas_and_energy_rank():
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


def test_copy_to_peft_takes_any_layer_with_lora_parameters():
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


def test_update_ranks_finds_a_planted_low_rank_change():
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight += torch.randn(128, 3) @ torch.randn(3, 64)
    table = lora.update_ranks(before, model, ["up_proj", "q_proj"], shares=(0.999,))
    row = table.loc["layers.1.mlp.up_proj"]
    assert (row["module"], row["shape"], row["full rank"]) == ("up_proj", (128, 64), 64)
    assert row["rank holding 100%"] == 3  # 99.9% rounds to 100% in the column name
    assert len(table) == 4


def test_plot_accuracy_vs_params_labels_every_point():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    table = pd.DataFrame(
        {"trainable": [10, 1000], "exact match": [0.2, 0.8]}, index=["r=1", "r=64"]
    )
    fig = lora.plot_accuracy_vs_params(table, "sweep")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.texts] == ["r=1", "r=64"]


def test_adapter_matrix_switches_adapters_and_scores_the_base(monkeypatch):
    import ftlearn.evaluation

    def config(target):  # a random B, so that each adapter changes the outputs its own way
        return LoraConfig(r=R, lora_alpha=ALPHA, target_modules=[target], init_lora_weights=False)

    model = get_peft_model(tiny_llama(), config("q_proj"), adapter_name="first")
    model.add_adapter("second", config("v_proj"))
    ids = input_ids()

    def fake_score(peft_model, tokenizer, rows, **kwargs):  # a number that says who answered
        with torch.no_grad():
            return {"exact_match": peft_model(input_ids=ids).logits.sum().item() + len(rows)}

    monkeypatch.setattr(ftlearn.evaluation, "evaluate_exact_match", fake_score)
    table = lora.adapter_matrix(model, None, {"one row": [{}], "two rows": [{}, {}]})
    assert list(table.index) == ["adapter first", "adapter second", "no adapter (base)"]
    with torch.no_grad():
        base = tiny_llama()(input_ids=ids).logits.sum().item()
    assert table.loc["no adapter (base)", "one row"] == pytest.approx(base + 1, abs=1e-3)
    assert table["two rows"].sub(table["one row"]).tolist() == pytest.approx([1, 1, 1])
    assert table["one row"].nunique() == 3  # each adapter really answered in turn


def test_train_and_score_trains_the_adapter_only(tmp_path):
    from transformers import AutoTokenizer

    from ftlearn.paths import MODELS_DIR
    from ftlearn.pretraining import new_tiny_model
    from ftlearn.training import SFTSettings
    from ftlearn.world import load_split

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    model = new_tiny_model(
        tok, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=128,
    )  # fmt: skip
    rows = load_split("instructions_train")[:32]
    settings = SFTSettings(output_dir=str(tmp_path), max_steps=2, batch_size=8, learning_rate=1e-3)
    run = lora.train_and_score(
        model, tok, rows, rows[:4], settings, lora.lora_config(r=2), max_new_tokens=2
    )
    expected = lora.lora_param_count_formula(model.config, "all-linear", 2)
    assert run["trainable"] == expected == lora.peft_trainable(run["model"])
    assert run["optimizer state MB"] == 8 * expected / 1e6  # AdamW: two fp32 moments a parameter
    assert 0 <= run["exact match"] <= 1 and run["step ms"] > 0 and len(run["predictions"]) == 4
