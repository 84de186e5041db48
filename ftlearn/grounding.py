"""Grounding (11_grounding_vs_finetuning): retrieval over the corpus, passages in the prompt, new towns.

- `new_towns`, `town_documents`, `town_rows`: towns no model has seen (names the shipped world never
  used, facts from another seed), their corpus paragraphs and the questions about them.
- `passages`: the corpus cut into sentences, each once: a sentence states one fact, what a question
  needs. `gold` names the sentences that answer a question; `recall_at_k` scores a retriever by them.
- `BM25`: bm25s over the passages. `Encoder`, `train_encoder`, `Dense`: a bag-of-tokens embedding
  model started from the LM's token embeddings and trained contrastively (`info_nce`), in FAISS.
- `with_context` puts retrieved passages in a question's prompt, and says when they do not fit;
  `raft_rows` builds RAFT's training rows (the gold passage among distractors); `abstain` answers
  "I do not know" where retrieval found nothing relevant.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ftlearn import world

QUESTION_TASKS = ("short_answer", "yes_no")  # one fact a question: what one passage can answer
DONT_KNOW = "I do not know."


def new_towns(n: int = 20, seed: int = 1, skip: Sequence[str] = ()) -> list[world.Town]:
    """`n` towns whose names the shipped world never used (nor `skip`), with facts drawn from `seed`."""
    used = {t["town"] for t in world.load_split("towns")} | set(skip)
    free = [p + s for p in world.PREFIXES for s in world.SUFFIXES if p + s not in used]
    if n > len(free):
        raise ValueError(f"n={n} new towns asked for, but only {len(free)} names are free; lower n.")
    rng = random.Random(seed)
    rng.shuffle(free)
    return [
        world.Town(name, *(rng.choice(world.VALUES[a]) for a in world.ATTRIBUTES), *(rng.random() < 0.5 for _ in world.FLAGS))
        for name in free[:n]
    ]


def town_documents(towns: Sequence[world.Town], per_town: int = 12, seed: int = 1) -> list[str]:
    """Corpus paragraphs about `towns`, as the world writes them (`world.describe`), `per_town` each."""
    rng = random.Random(seed)
    return [world.describe(t, rng) for t in towns for _ in range(per_town)]


def town_rows(towns: Sequence[world.Town], seed: int = 1, tasks: Sequence[str] = QUESTION_TASKS) -> list[dict]:
    """The world's questions about `towns` (`world.town_questions`) of the given tasks."""
    rng = random.Random(seed)
    return [r for t in towns for r in world.town_questions(t, rng) if r["task"] in tasks]


def towns_by_name(towns: Sequence[world.Town | dict]) -> dict[str, world.Town]:
    """Towns (or towns.jsonl rows) by name."""
    fields = set(world.Town.__dataclass_fields__)
    out = [t if isinstance(t, world.Town) else world.Town(**{k: v for k, v in t.items() if k in fields}) for t in towns]
    return {t.town: t for t in out}


def passages(documents: Sequence[str]) -> list[str]:
    """Every sentence of the prose documents, once, in order of first appearance (quiz sheets skipped)."""
    seen: dict[str, None] = {}
    for doc in documents:
        if "\n" in doc:  # a quiz sheet (question / answer lines): training data, not a document
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", doc.strip()):
            seen.setdefault(sentence, None)
    return list(seen)


def fact_of(row: dict) -> str:
    """The fact a question asks: "river", "coast", ... (the last part of the row's id)."""
    return row["id"].split("/")[-1]


def gold(row: dict, town: world.Town) -> set[str]:
    """Every sentence the world can write that states the fact `row` asks about `town`."""
    fact, facts = fact_of(row), asdict(town)
    if fact in world.FLAGS:
        return {s.format(town=town.town) for s in world.FLAGS[fact][town.fact(fact)]}
    return {s.format(**facts) for s in world.FACT_SENTENCES[fact]}


def question(row: dict) -> str:
    """The user's question of a chat row."""
    return row["messages"][-2]["content"]


def recall_at_k(found: Sequence[Sequence[str]], golds: Sequence[set[str]], k: int) -> list[int]:
    """Per question, 1 if a gold sentence is among the first `k` found."""
    return [int(any(p in g for p in f[:k])) for f, g in zip(found, golds, strict=True)]


class BM25:
    """A BM25 index over passages (bm25s, English stop words removed)."""

    def __init__(self, texts: Sequence[str]):
        import bm25s

        if not texts:
            raise ValueError("BM25 over no passages: the index is empty. Pass the corpus's sentences (grounding.passages).")
        self.texts = list(texts)
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize(self.texts, stopwords="en", show_progress=False), show_progress=False)

    def search(self, queries: Sequence[str], k: int = 3) -> tuple[list[list[str]], np.ndarray]:
        """The `k` best passages for each query, and their scores (0 where no query word is indexed)."""
        import bm25s

        ids, scores = self.index.retrieve(bm25s.tokenize(list(queries), stopwords="en", show_progress=False),
                                          k=min(k, len(self.texts)), show_progress=False)  # fmt: skip
        return [[self.texts[i] for i in row] for row in ids], scores


class Encoder(nn.Module):
    """A sentence embedding: the mean of its tokens' vectors (LM embeddings to start), projected, unit length."""

    def __init__(self, tokenizer, embeddings: torch.Tensor, dim: int = 128, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.tokenizer = tokenizer
        self.bag = nn.EmbeddingBag.from_pretrained(embeddings.detach().clone().float(), freeze=False, mode="mean")
        self.proj = nn.Linear(embeddings.shape[1], dim, bias=False)
        vocab = tokenizer.get_vocab()
        self.skip = {i for t, i in vocab.items() if not t.strip(" Ġ.,?!:;")}  # spaces, punctuation

    def ids(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The token ids of `texts`, flat, with each text's offset (what EmbeddingBag takes)."""
        rows = [[i for i in ids if i not in self.skip] or ids for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
        return torch.tensor([i for r in rows for i in r]), offsets

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit vectors, one row per text."""
        return F.normalize(self.proj(self.bag(*self.ids(texts))), dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 2048) -> np.ndarray:
        """Embeddings as float32 numpy rows (what FAISS takes)."""
        return np.concatenate([self(texts[i : i + batch_size]).numpy() for i in range(0, len(texts), batch_size)])


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE: query i's positive is key i; every other key (in-batch and hard negatives) is a negative.

    `keys` holds the B positives first, then any extra negatives. The loss is cross-entropy over the
    cosine similarities scaled by 1/temperature, as sentence-transformers' MultipleNegativesRankingLoss
    (scale 20 = temperature 0.05).
    """
    logits = queries @ keys.T / temperature
    return F.cross_entropy(logits, torch.arange(len(queries)))


def contrastive_triples(rows: Sequence[dict], towns: dict[str, world.Town], texts: Sequence[str], seed: int = 0):
    """(question, gold passage, hard negative) per row: the negative is another fact of the same town."""
    rng = random.Random(seed)
    by_town: dict[str, list[str]] = {}
    for t in texts:
        for name in re.findall(r"[A-Z][a-z]+", t):
            if name in towns:
                by_town.setdefault(name, []).append(t)
    triples = []
    for row in rows:
        town = towns[row["town"]]
        good = gold(row, town)
        pos = [t for t in by_town.get(town.town, []) if t in good]
        neg = [t for t in by_town.get(town.town, []) if t not in good]
        if pos and neg:
            triples.append((question(row), rng.choice(pos), rng.choice(neg)))
    return triples


def train_encoder(encoder: Encoder, triples: Sequence[tuple[str, str, str]], steps: int = 300, batch_size: int = 64,
                  lr: float = 3e-3, temperature: float = 0.05, seed: int = 0) -> list[float]:  # fmt: skip
    """Train `encoder` on (question, positive, hard negative) triples with `info_nce`; the losses."""
    if not triples:
        raise ValueError("no training triples: every question needs a gold passage and another of its town in the passages.")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(encoder.parameters(), lr=lr)
    losses = []
    encoder.train()
    for _ in range(steps):
        batch = rng.sample(list(triples), min(batch_size, len(triples)))
        q, pos, neg = zip(*batch, strict=True)
        loss = info_nce(encoder(q), encoder(list(pos) + list(neg)), temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    encoder.eval()
    return losses


class Dense:
    """A FAISS inner-product index of an encoder's unit vectors (= cosine similarity)."""

    def __init__(self, encoder: Encoder, texts: Sequence[str]):
        import faiss

        if not texts:
            raise ValueError("a dense index over no passages: the index is empty. Pass the corpus's sentences (grounding.passages).")
        self.encoder, self.texts = encoder, list(texts)
        vectors = encoder.encode(self.texts)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def search(self, queries: Sequence[str], k: int = 3) -> tuple[list[list[str]], np.ndarray]:
        """The `k` nearest passages for each query, and their cosine similarities."""
        scores, ids = self.index.search(self.encoder.encode(list(queries)), min(k, len(self.texts)))
        return [[self.texts[i] for i in row] for row in ids], scores


def with_context(row: dict, context: Sequence[str], tokenizer=None, max_tokens: int | None = None) -> tuple[dict, int]:
    """`row` with the passages before its question ("Context: ...\\nQuestion: ..."); passages dropped to fit.

    With a tokenizer and `max_tokens` (the prompt's budget in tokens, chat template included), the
    last passages are dropped until the prompt fits: returns the row and how many were dropped. A
    question that does not fit even alone raises, naming the row and its length.
    """
    messages = row["messages"]
    kept = list(context)

    def build(ps: list[str]) -> dict:
        user = {"role": "user", "content": f"Context: {' '.join(ps)}\nQuestion: {messages[-2]['content']}"}
        return {**row, "messages": [*messages[:-2], user, messages[-1]]}

    if tokenizer is None or max_tokens is None:
        return build(kept), 0
    def length(r: dict) -> int:
        text = tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    while kept and length(build(kept)) > max_tokens:
        kept.pop()
    if length(build(kept)) > max_tokens:
        raise ValueError(f"row {row.get('id', '?')}: the question alone is {length(build([]))} tokens, over the "
                         f"budget of {max_tokens}; shorten it or raise max_tokens (the model's context).")  # fmt: skip
    return build(kept), len(context) - len(kept)


def sentences_of(town: world.Town) -> dict[str, list[str]]:
    """Every sentence the world can write about `town`, by fact."""
    facts = asdict(town)
    out = {a: [s.format(**facts) for s in world.FACT_SENTENCES[a]] for a in world.ATTRIBUTES}
    return out | {f: [s.format(town=town.town) for s in world.FLAGS[f][town.fact(f)]] for f in world.FLAGS}


def redraw(town: world.Town, rng: random.Random) -> world.Town:
    """The same town with every fact drawn again: a passage about it says what the model cannot know."""
    return world.Town(town.town, *(rng.choice(world.VALUES[a]) for a in world.ATTRIBUTES), *(rng.random() < 0.5 for _ in world.FLAGS))


def raft_rows(rows: Sequence[dict], towns: dict[str, world.Town], p_gold: float = 0.8, distractors: int = 2, seed: int = 0) -> list[dict]:
    """RAFT's training rows, made so that only reading answers them.

    Each question comes with two distractors (another fact of the same town, the same fact of another
    town) and, with probability `p_gold`, the passage that answers it, in random order. The town's
    facts are drawn again for every row (`redraw`), so the answer is in the passage and not in the
    model's memory: a model that answers training towns from memory learns nothing from their true
    passages (measured: 40 steps on them left new towns at chance). Without the passage the answer
    is `DONT_KNOW`: abstention, trained.
    """
    rng = random.Random(seed)
    names = sorted(towns)
    out = []
    for row in rows:
        fact = fact_of(row)
        town = redraw(towns[row["town"]], rng)
        other = redraw(towns[rng.choice([n for n in names if n != town.town])], rng)
        own = sentences_of(town)
        context = [rng.choice(own[rng.choice([f for f in own if f != fact])]), rng.choice(sentences_of(other)[fact])]
        context = rng.sample(context, distractors)
        answer = DONT_KNOW
        if rng.random() < p_gold:
            context.append(rng.choice(own[fact]))
            value = town.fact(fact)
            answer = ("Yes" if value else "No") if isinstance(value, bool) else value
        rng.shuffle(context)
        row = {**row, "messages": [*row["messages"][:-1], {"role": "assistant", "content": answer}]}
        out.append(with_context(row, context)[0])
    return out


def train_reader(profile, tokenizer, run):
    """RAFT where no reader ships: `ftlearn.tiny.READER`'s rows, full fine-tuning of the profile's instruct
    model, sized by `run` (`plan.run(profile, "11_grounding_vs_finetuning/RAFT")`)."""
    from ftlearn.models import load
    from ftlearn.tiny import reader_rows
    from ftlearn.training import make_trainer

    model = load(profile, "instruct")[0]
    settings = run.settings(profile, "runs/11/raft", learning_rate=profile.learning_rate, logging_steps=10)
    make_trainer(model, tokenizer, reader_rows(), settings).train()
    return model


def few_shot(row: dict, examples: Sequence[dict]) -> dict:
    """`row` after `examples` as earlier turns of the chat (worked examples in context), its system prompt first."""
    system = [m for m in row["messages"] if m["role"] == "system"]
    shots = [m for e in examples for m in e["messages"] if m["role"] != "system"]
    return {**row, "messages": system + shots + [m for m in row["messages"] if m["role"] != "system"]}


def prompt_tokens(tokenizer, rows: Sequence[dict]) -> float:
    """The mean length of the rows' prompts in tokens, chat template included: what a query costs."""
    texts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in rows]
    return float(np.mean([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]))


def abstain(answers: Sequence[str], top_scores: Sequence[float], threshold: float) -> list[str]:
    """Each answer, or `DONT_KNOW` where the best retrieved passage scored below `threshold`."""
    return [a if s >= threshold else DONT_KNOW for a, s in zip(answers, top_scores, strict=True)]


def answers_a_fact(answer: str, row: dict) -> bool:
    """Whether an answer states a fact of the kind asked (a value of that fact, or yes/no): confident.

    For a town that does not exist, such an answer is a hallucination."""
    fact = fact_of(row)
    values = ["Yes", "No"] if fact in world.FLAGS else world.VALUES[fact]
    return answer.strip().rstrip(".").lower() in {v.lower() for v in values}
