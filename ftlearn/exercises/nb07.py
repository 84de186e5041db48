"""The checks of 07_peft_methods' exercises."""

from __future__ import annotations

import torch

from ftlearn.exercises import exercise


@exercise("07.1")
def _prefix_counts(answer, model) -> str:
    from peft import PeftType

    config = model.peft_config["default"]
    assert config.peft_type == PeftType.PREFIX_TUNING and config.prefix_projection, (
        "pass the prefix-tuning model of section 4 (prefix_projection=True) as `model`"
    )
    assert isinstance(answer, tuple) and len(answer) == 2, "give (trained, kept): two counts"
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():  # what peft saves: the MLP's output for the n virtual tokens
        kept = model.get_prompt_embedding_to_save("default").numel()
    assert answer != (kept, trained), "the two are swapped: the MLP trains more than it leaves"
    assert answer[0] == trained, (
        f"{answer[0]:,} is not what trains: count every parameter that requires a gradient, "
        "the projection MLP's included"
    )
    assert answer[1] == kept, (
        f"{answer[1]:,} is not what inference needs: the MLP's output, one key and one value "
        "vector per virtual token per layer (n x layers x 2 x the key/value width)"
    )
    return (
        f"Trains {trained:,}, keeps {kept:,}: the MLP ({trained - kept:,} more) only helps "
        "optimisation, and peft saves the prefix it computes."
    )


@exercise("07.2")
def _ia3_by_hand(answer, model) -> str:
    from ftlearn.peft_methods import merged_copy

    assert isinstance(answer, tuple) and len(answer) == 2, (
        "give (k_proj weight, down_proj weight) of layer 0, merged by hand"
    )
    k_mine, down_mine = (torch.as_tensor(a, dtype=torch.float32) for a in answer)
    merged, why = merged_copy(model)
    assert merged is not None, f"pass the trained (IA)³ model as `model` ({why})"
    layer = merged.model.layers[0]
    k, down = layer.self_attn.k_proj.weight, layer.mlp.down_proj.weight
    assert k_mine.shape == k.shape and down_mine.shape == down.shape, (
        f"shapes {tuple(k_mine.shape)}, {tuple(down_mine.shape)}: the weights are "
        f"{tuple(k.shape)} (out x in) and {tuple(down.shape)}"
    )
    frozen = model.base_model.model.model.layers[0].self_attn.k_proj.base_layer.weight
    assert not torch.allclose(k_mine, frozen), "that is the frozen k_proj: multiply in l_k"
    assert torch.allclose(k_mine, k, atol=1e-6), (
        "k_proj: (IA)³ scales each output channel, so l_k multiplies the rows of W (out x in)"
    )
    assert torch.allclose(down_mine, down, atol=1e-6), (
        "down_proj is a feedforward module: (IA)³ scales its input, so l_ff multiplies the "
        "columns of W"
    )
    return (
        "Rows of k_proj, columns of down_proj: a per-channel scale is a diagonal matrix, so it "
        "folds into W and serving costs nothing extra."
    )


@exercise("07.3")
def _longer_budget(
    answer, long: float, lora: float, model, tokenizer, rows, max_new_tokens: int = 6
) -> str:
    from peft import PeftModel, PeftType

    from ftlearn.evaluation import evaluate_exact_match

    assert answer in ("yes", "no"), 'answer "yes" or "no": does (IA)³ reach LoRA ...'
    assert (
        isinstance(model, PeftModel) and model.peft_config["default"].peft_type == PeftType.IA3
    ), "pass your (IA)³ model, trained twice as long, as `model` (train_and_score's ['model'])"
    assert isinstance(long, float) and 0 <= long <= 1, "`long`: the exact match you measured"
    em = evaluate_exact_match(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=64)
    assert abs(em["exact_match"] - long) < 1e-9, (
        f"your model scores {em['exact_match']:.1%} on these rows, not {long:.1%}"
    )
    truth = "yes" if long >= lora else "no"
    assert answer == truth, f"measured: (IA)³ {long:.1%} with 2x the steps, LoRA {lora:.1%}"
    return (
        f"(IA)³ {long:.1%} with 2x the budget against LoRA's {lora:.1%} with 1x: a ranking holds "
        "only for the budget it was measured at."
    )
