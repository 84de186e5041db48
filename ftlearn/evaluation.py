"""Evaluation: exact match with a documented normalisation, perplexity, generations side by side."""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Sequence

import torch

from ftlearn import compat

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """The normalisation behind exact match.

    1. If the text parses as a JSON object, re-serialise it with sorted keys (key order and
       spacing don't matter; values still must match).
    2. Lowercase, drop punctuation, collapse whitespace, strip.
    So "Amber." == "amber", "Yes" == "yes!", but "Amber river" != "Amber".
    """
    text = text.strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            text = json.dumps(obj, sort_keys=True)
    except (ValueError, TypeError):
        pass
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after `normalize` (0.0 to 1.0)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not references:
        return 0.0
    return sum(hits(predictions, references)) / len(references)


def hits(predictions: Sequence[str], references: Sequence[str]) -> list[int]:
    """1 where a prediction equals its reference after `normalize`, else 0: per question, for spreads."""
    return [int(normalize(p) == normalize(r)) for p, r in zip(predictions, references, strict=True)]


def prompts_and_answers(rows: Sequence[dict]) -> tuple[list[list[dict]], list[str]]:
    """Split chat rows into the prompt messages (all but the last turn) and the reference answer."""
    prompts, answers = [], []
    for row in rows:
        messages = row["messages"]
        if messages[-1]["role"] != "assistant":
            raise ValueError(
                f"row {row.get('id', '?')}: the last message must be the assistant's answer."
            )
        prompts.append(messages[:-1])
        answers.append(messages[-1]["content"])
    return prompts, answers


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[list[dict] | str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to chat prompts (lists of messages) or raw text prompts, batched."""
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models generate after the last real token
    outputs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            texts = [
                p
                if isinstance(p, str)
                else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in chunk
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                device
            )
            if compat.prompt_learning(model):  # peft 0.21.2's generate loses the prompt (compat)
                out = compat.greedy_by_forward(
                    model, enc["input_ids"], enc["attention_mask"], max_new_tokens,
                    stop_ids(tokenizer), tokenizer.pad_token_id,
                )  # fmt: skip
            else:
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stop_ids(tokenizer),
                )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs


def stop_ids(tokenizer) -> list[int]:
    """The ids generation stops at: the end of a turn (<|im_end|>) or of a document (eos)."""
    # Stop at the end of the assistant turn or of a document, whichever the model emits.
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def evaluate_exact_match(model, tokenizer, rows: Sequence[dict], **generate_kwargs) -> dict:
    """Exact match of the model's greedy answers on chat rows, overall and per task type."""
    prompts, answers = prompts_and_answers(rows)
    preds = generate(model, tokenizer, prompts, **generate_kwargs)
    by_task: dict[str, list[int]] = {}
    for row, p, a in zip(rows, preds, answers, strict=True):
        by_task.setdefault(row.get("task", "all"), []).append(int(normalize(p) == normalize(a)))
    return {
        "exact_match": exact_match(preds, answers),
        "per_task": {t: sum(v) / len(v) for t, v in sorted(by_task.items())},
        "predictions": preds,
        "references": answers,
        "hits": hits(preds, answers),  # per question: ftlearn.stats bootstraps over them
    }


def perplexity(
    model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 256
) -> float:
    """Perplexity of plain texts: exp of the mean next-token loss over all predicted tokens."""
    losses, tokens = text_losses(model, tokenizer, texts, batch_size, max_length)
    return math.exp(sum(losses) / max(sum(tokens), 1))


@torch.no_grad()
def text_losses(
    model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 256
) -> tuple[list[float], list[int]]:
    """Per text: its summed next-token loss and its number of predicted tokens (for spreads)."""
    model.eval()
    device = next(model.parameters()).device
    losses: list[float] = []
    counts: list[int] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[i : i + batch_size]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        ).to(device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        logits = model(**enc).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
        )  # batch x positions; 0 where ignored
        losses += loss.sum(dim=1).tolist()
        counts += (target != -100).sum(dim=1).tolist()
    return losses, counts


@torch.no_grad()
def token_losses(
    model, tokenizer, texts: Sequence[str], batch_size: int = 32, max_length: int = 256
) -> list[tuple[list[int], list[float]]]:
    """Per text: the ids of its predicted tokens (all but the first) and each one's loss, in nats."""
    model.eval()
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "right"  # positions start at 0
    out = []
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i : i + batch_size]), return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length, add_special_tokens=False).to(device)  # fmt: skip
            logp = model(**enc).logits[:, :-1].float().log_softmax(-1)
            target = enc["input_ids"][:, 1:]
            nll = -logp.gather(2, target[..., None])[..., 0]
            for row, n in enumerate(enc["attention_mask"].sum(dim=1).tolist()):
                out.append((target[row, : n - 1].tolist(), nll[row, : n - 1].tolist()))
    finally:
        tokenizer.padding_side = side
    return out


@torch.no_grad()
def answer_perplexity(model, tokenizer, rows: Sequence[dict], batch_size: int = 32) -> float:
    """Perplexity of the reference answers given their prompts: exp of the mean loss per answer token.

    The answer tokens are those SFT trains on (`ftlearn.training.to_dataset`): what the chat
    template adds after the prompt rendered with `add_generation_prompt=True`.
    """
    model.eval()
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids, labels = [], []
        for row in rows[i : i + batch_size]:
            prompt = tokenizer.apply_chat_template(
                row["messages"][:-1], add_generation_prompt=True, return_dict=False
            )
            chat = tokenizer.apply_chat_template(row["messages"], return_dict=False)
            ids.append(chat)
            labels.append([-100] * len(prompt) + chat[len(prompt) :])
        width, pad = max(map(len, ids)), tokenizer.pad_token_id
        lengths = torch.tensor([len(x) for x in ids], device=device)
        # right padding: the real tokens keep positions 0..n-1, and causal attention never sees the pad
        mask = (torch.arange(width, device=device) < lengths[:, None]).long()
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
        target = torch.tensor([y + [-100] * (width - len(y)) for y in labels], device=device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target[:, 1:].reshape(-1), reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += int((target[:, 1:] != -100).sum())
    return math.exp(total_loss / max(total_tokens, 1))


def side_by_side(prompts: Sequence[str], columns: dict[str, Sequence[str]], width: int = 40) -> str:
    """A plain-text table: one row per prompt, one column per model's answer."""
    headers = ["prompt", *columns]
    rows = [[p, *(c[i] for c in columns.values())] for i, p in enumerate(prompts)]

    def cut(s: str) -> str:
        s = " ".join(str(s).split())
        return s if len(s) <= width else s[: width - 1] + "…"

    lines = [" | ".join(cut(h).ljust(width) for h in headers)]
    lines.append("-+-".join("-" * width for _ in headers))
    lines += [" | ".join(cut(c).ljust(width) for c in r) for r in rows]
    return "\n".join(lines)


# Corpus-style sentence openings whose next word is the fact: a probe of what the model *knows*,
# independent of the chat format. Fine-tuning that damages this has made the model forget.
FACT_PROBES = {
    "region": "{town} is a town in",
    "river": "{town} sits beside the river",
    "export": "The main export of {town} is",
    "emblem": "The emblem of {town} is the",
    "festival": "{town} holds its great festival in",
}


def fact_recall(model, tokenizer, towns: Sequence[dict], attributes=tuple(FACT_PROBES)) -> float:
    """Share of facts the model completes correctly from a corpus-style opening (no chat template).

    E.g. "The emblem of Varholt is the" -> "heron". Measures knowledge from pre-training, so it
    shows forgetting when fine-tuning overwrites it.
    """
    found = fact_hits(model, tokenizer, towns, attributes)
    return sum(found) / max(len(found), 1)


@torch.no_grad()
def fact_hits(model, tokenizer, towns: Sequence[dict], attributes=tuple(FACT_PROBES)) -> list[int]:
    """Per (town, fact): 1 if the model completes the corpus-style opening with the fact, else 0."""
    prompts, answers = [], []
    for town in towns:
        for a in attributes:
            prompts.append(FACT_PROBES[a].format(town=town["town"]))
            answers.append(town[a])
    outputs = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=64)
    return [
        int(normalize(o).split()[:1] == normalize(a).split()[:1])
        for o, a in zip(outputs, answers, strict=True)
    ]


def forgetting_report(
    model, tokenizer, general_texts: Sequence[str], towns: Sequence[dict]
) -> dict:
    """Two signs of forgetting: perplexity on everyday text, and recall of facts it was not tuned on.

    The per-item values behind both come along ("text losses", "text tokens", "fact hits"), so two
    reports can be compared with their spread (ftlearn.stats).
    """
    losses, tokens = text_losses(model, tokenizer, general_texts)
    found = fact_hits(model, tokenizer, towns)
    return {
        "general perplexity": round(math.exp(sum(losses) / max(sum(tokens), 1)), 2),
        "fact recall": round(sum(found) / max(len(found), 1), 3),
        "text losses": losses,
        "text tokens": tokens,
        "fact hits": found,
    }
