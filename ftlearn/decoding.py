"""Decoding (01_foundation_vs_instruct): how the next token is chosen, and when a turn ends.

`next_token_distribution` is the whole mechanism, written out to be read: repetition penalty,
temperature, top-k, then top-p, the order transformers applies its logits processors in.
tests/test_decoding.py checks it against transformers' own processors. `decoding_table` samples
several answers per prompt with `model.generate` and measures what each setting does to accuracy
and diversity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ftlearn.evaluation import normalize, prompts_and_answers, stop_ids

# The settings 01 compares: greedy, then sampling with each knob turned on its own.
SETTINGS: dict[str, dict] = {
    "greedy": dict(do_sample=False),
    "temperature 0.7": dict(do_sample=True, temperature=0.7, top_k=0),
    "temperature 1.0": dict(do_sample=True, temperature=1.0, top_k=0),
    "temperature 1.5": dict(do_sample=True, temperature=1.5, top_k=0),
    "top-k 5 (T=1)": dict(do_sample=True, temperature=1.0, top_k=5),
    "top-p 0.9 (T=1)": dict(do_sample=True, temperature=1.0, top_k=0, top_p=0.9),
    "repetition penalty 1.3 (greedy)": dict(do_sample=False, repetition_penalty=1.3),
}


def next_token_distribution(
    logits: torch.Tensor,
    previous: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """The probabilities sampling draws from, for logits (batch, vocab) after tokens `previous`."""
    scores = logits.float().clone()
    if repetition_penalty != 1.0 and previous is not None:
        # CTRL's penalty: a token already in the text is made less likely whatever its sign
        seen = scores.gather(1, previous)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        scores.scatter_(1, previous, seen)
    scores = scores / temperature  # < 1 sharpens, > 1 flattens
    if top_k > 0:  # keep the k most likely tokens
        kth = scores.topk(min(top_k, scores.shape[-1])).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose probability reaches top_p
        ordered, order = scores.sort(descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass above each token
        drop = (before >= top_p).scatter(1, order, before >= top_p)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


@torch.no_grad()
def sample_answers(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    n: int,
    max_new_tokens: int = 40,
    seed: int = 0,
    eos: bool = True,
    **settings,
) -> list[list[str]]:
    """`n` answers to each chat prompt, drawn with `model.generate(**settings)`; eos=False: no stop."""
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = [
        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
        model.device
    )
    torch.manual_seed(seed)
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, num_return_sequences=n,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids(tokenizer) if eos else [],
        **settings,
    )  # fmt: skip
    tokenizer.padding_side = side
    decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=eos)
    flat = [t.strip() for t in decoded]
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


def decoding_table(
    model,
    tokenizer,
    rows: Sequence[Mapping],
    settings: Mapping[str, dict] = SETTINGS,
    n: int = 4,
    seed: int = 0,
    **kwargs,
) -> pd.DataFrame:
    """For each setting: exact match over all samples, the share of prompts any sample got right,
    distinct answers per prompt (1 = always the same) and the mean answer length in characters."""
    prompts, answers = prompts_and_answers(rows)
    table = {}
    for name, s in settings.items():
        k = n if s.get("do_sample") else 1  # greedy answers are all the same: one is enough
        samples = sample_answers(model, tokenizer, prompts, k, seed=seed, **kwargs, **s)
        right = [
            [normalize(x) == normalize(a) for x in xs]
            for xs, a in zip(samples, answers, strict=True)
        ]
        table[name] = {
            "exact match": sum(map(sum, right)) / (k * len(rows)),
            "any of the samples right": sum(map(any, right)) / len(rows),
            "distinct answers per prompt": sum(len(set(xs)) for xs in samples) / len(rows),
            "mean length (chars)": sum(len(x) for xs in samples for x in xs) / (k * len(rows)),
        }
    return pd.DataFrame(table).T


def stop_rate(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int = 40) -> float:
    """The share of greedy answers that end their turn (emit a stop token) within the budget."""
    texts = sample_answers(
        model, tokenizer, prompts, 1, max_new_tokens, eos=False, do_sample=False
    )  # fmt: skip
    stops = [tokenizer.decode([i]) for i in stop_ids(tokenizer)]
    return sum(any(s in t for s in stops) for (t,) in texts) / len(prompts)
