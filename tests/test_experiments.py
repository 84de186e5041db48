"""The comparison runs of 04 and 07 (ftlearn.experiments): train, score, tabulate."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ftlearn import experiments


def test_plot_accuracy_vs_params_labels_every_point():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    table = pd.DataFrame(
        {"trainable": [10, 1000], "exact_match": [0.2, 0.8]}, index=["r=1", "r=64"]
    )
    fig = experiments.plot_accuracy_vs_params(table, "sweep")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.texts] == ["r=1", "r=64"]


def test_adapter_matrix_switches_adapters_and_scores_the_base(tiny_llama, monkeypatch):
    import ftlearn.evaluation

    def config(target):  # a random B, so that each adapter changes the outputs its own way
        return LoraConfig(r=4, lora_alpha=8, target_modules=[target], init_lora_weights=False)

    model = get_peft_model(tiny_llama(), config("q_proj"), adapter_name="first")
    model.add_adapter("second", config("v_proj"))
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))

    def fake_score(peft_model, tokenizer, rows, **kwargs):  # a number that says who answered
        with torch.no_grad():
            return {"exact_match": peft_model(input_ids=ids).logits.sum().item() + len(rows)}

    monkeypatch.setattr(ftlearn.evaluation, "evaluate_exact_match", fake_score)
    table = experiments.adapter_matrix(model, None, {"one row": [{}], "two rows": [{}, {}]}, max_new_tokens=8)
    assert list(table.index) == ["adapter first", "adapter second", "no adapter (base)"]
    with torch.no_grad():
        base = tiny_llama()(input_ids=ids).logits.sum().item()
    assert table.loc["no adapter (base)", "one row"] == pytest.approx(base + 1, abs=1e-3)
    assert table["two rows"].sub(table["one row"]).tolist() == pytest.approx([1, 1, 1])
    assert table["one row"].nunique() == 3  # each adapter really answered in turn


def test_each_task_gets_new_tokens_for_its_longest_answer():
    from transformers import AutoTokenizer

    from ftlearn.paths import MODELS_DIR

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    rows = [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": a}]}
            for a in ("Yes.", "A much longer answer, of many more tokens than the first one.")]
    longest = len(tok(rows[1]["messages"][-1]["content"], add_special_tokens=False)["input_ids"])
    assert experiments.answer_budget(tok, rows) == longest + 1 + 4  # the answer, its end of turn, a margin
    assert experiments.answer_budget(tok, rows[:1], margin=0) < longest


def test_train_and_score_trains_the_adapter_only(tmp_path):
    from transformers import AutoTokenizer

    from ftlearn.estimator import MiB
    from ftlearn.lora import lora_config, peft_trainable
    from ftlearn.paths import MODELS_DIR
    from ftlearn.pretraining import new_tiny_model
    from ftlearn.shapes import lora_params
    from ftlearn.training import SFTSettings
    from ftlearn.world import load_split

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    model = new_tiny_model(
        tok, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=128,
    )  # fmt: skip
    rows = load_split("instructions_train")[:32]
    settings = SFTSettings(output_dir=str(tmp_path), max_steps=2, batch_size=8, learning_rate=1e-3)
    run = experiments.train_and_score(
        model, tok, rows, rows[:4], settings, lora_config(r=2), max_new_tokens=2
    )
    expected = lora_params(model.config, 2, "all-linear")
    assert run["trainable"] == expected == peft_trainable(run["model"])
    # AdamW: two fp32 moments a parameter, 8 bytes (MiB is a power of 2: the division is exact)
    assert run["optimizer_state_mib"] * MiB == 8 * expected
    assert 0 <= run["exact_match"] <= 1 and run["step_ms"] > 0 and len(run["predictions"]) == 4
    assert 0 < run["trainable_percent"] < 100 and run["train_loss"] > 0
    assert (run["lora_r"], run["lora_alpha"], run["use_rslora"]) == (2, 16, False)
    assert (run["learning_rate"], run["seed"]) == (1e-3, 0)
    keys = set(run) - {"model"}
    assert all(k.isidentifier() and k == k.lower() for k in keys), keys  # one key style: snake_case


def _seeded(em, loss, predictions):
    return {"exact_match": em, "train_loss": loss, "predictions": predictions}


def test_spread_table_and_compare_seeded():
    refs = ["a", "b", "c", "d"]
    a = [_seeded(0.5, 2.0, ["a", "b", "x", "x"]), _seeded(0.75, 2.1, ["a", "b", "c", "x"])]
    b = [_seeded(0.25, 2.05, ["a", "x", "x", "x"]), _seeded(0.0, 3.0, ["x", "x", "x", "x"])]
    table = experiments.spread_table({"a": a, "b": b})
    assert table.loc["a", "seeds"] == 2 and table.loc["a", "exact_match_mean"] == 0.625
    assert table.loc["b", "train_loss_min"] == 2.05 and table.loc["b", "train_loss_max"] == 3.0
    assert table.loc["a", "exact_match_sd"] == pytest.approx(0.25 / 2**0.5)
    compared = experiments.compare_seeded(a, b, refs)
    assert compared["exact_match_apart"] == 1  # every seed of a above every seed of b
    assert compared["train_loss_apart"] == 0  # 2.0-2.1 against 2.05-3.0: they overlap
    assert compared["exact_match"].diff == pytest.approx(0.5)
    assert experiments.seed_hits(a, refs).tolist() == [1, 1, 0.5, 0]
    assert experiments.compare_seeded(b, a, refs)["exact_match_apart"] == -1
    with pytest.raises(ValueError, match="no runs"):
        experiments.spread_table({"empty": []})


def test_plot_spread_draws_a_line_per_rule():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    one = experiments.spread_table({"x": [_seeded(0.5, 2.0, []), _seeded(0.7, 2.2, [])]})
    lines = pd.concat([one.assign(rule=rule, r=rank) for rule in ("A", "B") for rank in (8, 32)])
    fig = experiments.plot_spread(lines, x="r", by="rule")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(fig.axes) == 2 and legend == ["A", "B"]
