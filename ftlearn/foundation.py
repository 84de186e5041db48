"""Helpers for 01_foundation_vs_instruct: look inside a causal LM, a tokenizer and a chat template."""

from __future__ import annotations

import pandas as pd
import torch


@torch.no_grad()
def next_token_table(model, tokenizer, text: str, k: int = 3) -> pd.DataFrame:
    """For each position of `text`: the actual next token, its probability, and the model's top k."""
    model.eval()
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(
        model.device
    )
    probs = model(ids).logits[0, :-1].float().softmax(-1)
    rows = []
    for pos in range(ids.shape[1] - 1):
        actual = ids[0, pos + 1].item()
        top = probs[pos].topk(k)
        rows.append(
            {
                "context ends with": tokenizer.decode(ids[0, pos]),
                "actual next": tokenizer.decode(actual),
                "p(actual)": round(probs[pos, actual].item(), 3),
                **{
                    f"top {i + 1}": f"{tokenizer.decode(t)!r} {p:.2f}"
                    for i, (p, t) in enumerate(
                        zip(top.values.tolist(), top.indices.tolist(), strict=True)
                    )
                },
            }
        )
    return pd.DataFrame(rows)


def show_tokens(tokenizer, text: str, add_special_tokens: bool = False) -> pd.DataFrame:
    """The tokens of `text`, one row each: id, the token as stored, and the text it decodes to."""
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return pd.DataFrame(
        {
            "id": ids,
            "token": tokenizer.convert_ids_to_tokens(ids),
            "text": [repr(tokenizer.decode([i])) for i in ids],
        }
    )


def parameter_count(model) -> int:
    """All parameters of a model (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
