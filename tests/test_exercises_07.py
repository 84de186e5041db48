"""07_peft_methods' exercise checks: a right answer passes, each wrong one fails with its hint."""

import pytest
import torch
from peft import get_peft_model

from ftlearn.exercises import NotAttempted, check
from ftlearn.peft_methods import peft_config, prefix_kept


def test_prefix_counts(tiny_llama):
    model = get_peft_model(tiny_llama(), peft_config("prefix_tuning"))
    trained, kept = 5536, prefix_kept(model.config)  # tests/test_peft_methods.py works out 5,536
    check("07.1", (trained, kept), model=model)
    with pytest.raises(AssertionError, match="swapped"):
        check("07.1", (kept, trained), model=model)
    with pytest.raises(AssertionError, match="projection MLP's included"):
        check("07.1", (kept, kept), model=model)
    with pytest.raises(AssertionError, match="what inference needs"):
        check("07.1", (trained, trained - 1), model=model)
    with pytest.raises(AssertionError, match="prefix_projection=True"):
        check("07.1", (1024, 1024), model=get_peft_model(tiny_llama(), peft_config("ia3")))


def test_ia3_merged_by_hand(tiny_llama):
    model = get_peft_model(tiny_llama(), peft_config("ia3"))
    with torch.no_grad():  # a trained-looking (IA)³: scales away from 1
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(torch.rand_like(p) + 0.5)
    layer = model.base_model.model.model.layers[0]
    k, down = layer.self_attn.k_proj, layer.mlp.down_proj
    l_k, l_ff = k.ia3_l["default"], down.ia3_l["default"]  # (out, 1) and (1, in)
    right = (k.base_layer.weight * l_k, down.base_layer.weight * l_ff)
    check("07.2", tuple(w.detach() for w in right), model=model)
    with pytest.raises(AssertionError, match="frozen k_proj"):
        check("07.2", (k.base_layer.weight, right[1]), model=model)
    with pytest.raises(AssertionError, match="rows"):  # a scale on k_proj's input side instead
        wrong_k = k.base_layer.weight * (torch.rand(1, k.in_features) + 0.5)
        check("07.2", (wrong_k.detach(), right[1].detach()), model=model)
    with pytest.raises(AssertionError, match="columns"):  # a scale on down_proj's output side
        wrong_down = down.base_layer.weight * (torch.rand(down.out_features, 1) + 0.5)
        check("07.2", (right[0].detach(), wrong_down.detach()), model=model)
    with pytest.raises(AssertionError, match="shapes"):
        check("07.2", (right[0].detach().T, right[1].detach()), model=model)


def test_longer_budget():
    from ftlearn import profiles
    from ftlearn.evaluation import evaluate_exact_match
    from ftlearn.models import load
    from ftlearn.world import load_split

    base, tok = load(profiles.get("tiny"), "base")
    rows = [r for r in load_split("instructions_test") if r["task"] == "short_answer"][:4]
    model = get_peft_model(base, peft_config("ia3"))
    em = evaluate_exact_match(model, tok, rows, max_new_tokens=6, batch_size=64)["exact_match"]
    context = dict(model=model, tokenizer=tok, rows=rows)
    check("07.3", "no", long=em, lora=em + 0.5, **context)
    check("07.3", "yes", long=em, lora=em, **context)
    with pytest.raises(AssertionError, match="measured"):
        check("07.3", "yes", long=em, lora=em + 0.5, **context)
    with pytest.raises(AssertionError, match="not"):  # a score the model does not have
        check("07.3", "no", long=min(em + 0.25, 1.0) if em < 1 else 0.0, lora=1.0, **context)
    with pytest.raises(AssertionError, match="pass your"):
        check("07.3", "no", long=em, lora=1.0, model=base, tokenizer=tok, rows=rows)
    with pytest.raises(NotAttempted):
        check("07.3", ..., long=em, lora=1.0, **context)
