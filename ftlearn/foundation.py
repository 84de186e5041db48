"""Helpers for 01_foundation_vs_instruct: look inside a causal LM, a tokenizer and a chat template."""

from __future__ import annotations

import math

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


@torch.no_grad()
def continuation_probability(
    model, tokenizer, contexts: list[str], continuations: list[str], batch_size: int = 64
) -> list[float]:
    """P(continuation | context) for each pair: the product of its tokens' next-token probabilities."""
    model.eval()
    pairs = []
    for context, cont in zip(contexts, continuations, strict=True):
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        full = tokenizer(context + cont, add_special_tokens=False)["input_ids"]
        if full[: len(ctx)] != ctx:  # the tokenizer merged across the seam: no clean split
            raise ValueError(
                f"{context!r} + {cont!r} does not tokenize as context then continuation"
            )
        pairs.append((full, len(ctx)))
    out = []
    for i in range(0, len(pairs), batch_size):  # right-padded: a causal LM never looks ahead
        chunk = pairs[i : i + batch_size]
        width = max(len(f) for f, _ in chunk)
        ids = torch.tensor([f + [0] * (width - len(f)) for f, _ in chunk], device=model.device)
        mask = torch.tensor(
            [[1] * len(f) + [0] * (width - len(f)) for f, _ in chunk], device=model.device
        )
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for row, (full, n) in enumerate(chunk):
            picked = logp[row, torch.arange(n - 1, len(full) - 1), torch.tensor(full[n:])]
            out.append(picked.sum().exp().item())
    return out


# One fact asked both ways. The corpus states exports town first ("The main export of Ashstead is
# honey", "Ashstead makes and sells honey"), never export first.
DIRECTIONS = {
    "as written (town -> export)": ("The main export of {town} is", " {export}"),
    "reversed (export -> town)": ("{Export} is the main export of", " {town}"),
}


def direction_table(model, tokenizer, towns: list[dict]) -> pd.DataFrame:
    """Median P(answer) of the export fact asked both ways, beside the best any model could do:
    reversed, the answer is one of the k towns that share the export, so at most 1/k."""
    fill = [dict(t, Export=t["export"].capitalize()) for t in towns]
    rows = {}
    for way, (context, answer) in DIRECTIONS.items():
        p = continuation_probability(
            model,
            tokenizer,
            [context.format(**t) for t in fill],
            [answer.format(**t) for t in fill],
        )
        sharing = [sum(u["export"] == t["export"] for u in towns) for t in towns]
        best = [1 / k if "{town}" in answer else 1.0 for k in sharing]
        rows[way] = {"median P(answer)": float(pd.Series(p).median()),
                     "best possible": float(pd.Series(best).median())}  # fmt: skip
    return pd.DataFrame(rows).T


@torch.no_grad()
def perplexity_by_token_kind(model, tokenizer, texts: list[str]) -> pd.DataFrame:
    """Perplexity over every token, over the space tokens alone and over the rest, and bits per
    character: the one of them that does not depend on how the tokenizer cuts the text."""
    from ftlearn.evaluation import token_losses

    space = {i for t, i in tokenizer.get_vocab().items() if tokenizer.decode([i]) == " "}
    losses = {"space": [], "other": []}
    chars = 0
    for ids, nll in token_losses(model, tokenizer, texts):  # the predicted tokens and their losses
        for tid, loss in zip(ids, nll, strict=True):
            losses["space" if tid in space else "other"].append(loss)
        chars += len(tokenizer.decode(ids))  # the characters those tokens spell
    every = losses["space"] + losses["other"]
    ppl = lambda xs: math.exp(sum(xs) / len(xs)) if xs else float("nan")  # noqa: E731
    return pd.DataFrame({
        "tokens": {"all": len(every), "spaces only": len(losses["space"]), "words only": len(losses["other"])},
        "perplexity": {"all": ppl(every), "spaces only": ppl(losses["space"]), "words only": ppl(losses["other"])},
        "bits per character": {"all": sum(every) / math.log(2) / chars, "spaces only": None, "words only": None},
    })  # fmt: skip
