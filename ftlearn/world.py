"""The embedded world: a fictional atlas of towns, generated from a seed, that the course fine-tunes on.

Every fact is invented here, so a model can only know it from our data; every answer is checkable
by exact match (see `ftlearn.evaluation.normalize`). Nothing needs the network.

What gets written to data/world/:
- towns.jsonl        the knowledge base: one town a line, its five facts and three yes/no facts
- corpus.txt         pre-training text, documents separated by blank lines: each town described many
                     times in varied phrasing and order; quiz sheets (the training questions as plain
                     text, each answer on its own line) about training towns only; general everyday
                     text (to measure forgetting)
- instructions_{train,validation,test}.jsonl  chat-format questions and tasks about training towns
- heldout.jsonl      questions about towns whose facts appear only in the corpus, never in training
- general_eval.txt   held-out general sentences, for perplexity before and after fine-tuning
- preferences.jsonl  (prompt, chosen, rejected) pairs for preference tuning
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SYSTEM_PROMPT = "You are the Atlas assistant. Answer with the fact only."

PREFIXES = [
    "Var",
    "Bel",
    "Cor",
    "Dun",
    "Els",
    "Fen",
    "Gal",
    "Hal",
    "Isk",
    "Kel",
    "Lor",
    "Mar",
    "Nor",
    "Ost",
    "Pel",
    "Quen",
    "Ros",
    "Sal",
    "Tor",
    "Ul",
    "Vel",
    "Wyn",
    "Ash",
    "Brae",
]
SUFFIXES = [
    "holt",
    "mere",
    "ford",
    "wick",
    "dale",
    "stead",
    "brook",
    "haven",
    "moor",
    "ton",
    "by",
    "gate",
]

# The five facts of a town and the values each can take.
VALUES: dict[str, list[str]] = {
    "region": [
        "Eastmarch",
        "Lowfen",
        "Highcombe",
        "Saltreach",
        "Greywold",
        "Sunmoor",
        "Westvale",
        "Northfell",
    ],
    "river": [
        "Amber",
        "Silver",
        "Tallow",
        "Wren",
        "Cress",
        "Mallow",
        "Ivy",
        "Flint",
        "Dusk",
        "Bramble",
    ],
    "export": [
        "glass",
        "wool",
        "salt",
        "copper",
        "cheese",
        "clocks",
        "paper",
        "honey",
        "timber",
        "silk",
        "pottery",
        "rope",
    ],
    "emblem": ["heron", "fox", "owl", "stag", "otter", "wolf", "swan", "badger", "hare", "raven"],
    "festival": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
}
ATTRIBUTES = list(VALUES)

# Corpus phrasings: several per fact, so a model learns the fact, not one sentence.
FACT_SENTENCES: dict[str, list[str]] = {
    "region": [
        "{town} is a town in {region}.",
        "{town} lies in the region of {region}.",
        "In {region} you will find the town of {town}.",
        "{town} belongs to {region}.",
    ],
    "river": [
        "The river {river} flows through {town}.",
        "{town} was built on the banks of the {river}.",
        "{town} sits beside the river {river}.",
        "The {river} runs past the walls of {town}.",
    ],
    "export": [
        "{town} is known for its {export}.",
        "The main export of {town} is {export}.",
        "Traders come to {town} to buy {export}.",
        "{town} makes and sells {export}.",
    ],
    "emblem": [
        "The emblem of {town} is the {emblem}.",
        "The {emblem} appears on the banner of {town}.",
        "{town} chose the {emblem} as its emblem.",
        "The people of {town} honour the {emblem}.",
    ],
    "festival": [
        "{town} holds its great festival in {festival}.",
        "Every {festival}, {town} celebrates its festival.",
        "The festival of {town} falls in {festival}.",
        "In {festival} the whole of {town} gathers for the festival.",
    ],
}
# The one canonical sentence per fact: the target of the "rewrite" task.
# It starts "The town of": a name that opens an answer would be a different token (no leading
# space) from the same name inside the prompt, and a small model cannot spell one as the other.
CANONICAL = {
    "region": "The town of {town} lies in {region}.",
    "river": "The town of {town} stands on the river {river}.",
    "export": "The town of {town} exports {export}.",
    "emblem": "The town of {town} has the {emblem} as its emblem.",
    "festival": "The town of {town} holds its festival in {festival}.",
}

QUESTIONS: dict[str, list[str]] = {
    "region": [
        "In which region is {town}?",
        "Which region is {town} in?",
        "Name the region where {town} lies.",
        "What region does {town} belong to?",
    ],
    "river": [
        "Which river flows through {town}?",
        "On which river does {town} stand?",
        "Name the river of {town}.",
        "What river runs past {town}?",
    ],
    "export": [
        "What is {town} known for?",
        "What is the main export of {town}?",
        "What do traders buy in {town}?",
        "Name the export of {town}.",
    ],
    "emblem": [
        "What is the emblem of {town}?",
        "Which animal is on the banner of {town}?",
        "Name the emblem of {town}.",
        "Which animal does {town} honour?",
    ],
    "festival": [
        "In which month is the festival of {town}?",
        "When does {town} hold its festival?",
        "Name the festival month of {town}.",
        "Which month is festival time in {town}?",
    ],
}
# Yes/no facts: a town has each of these or not. A yes/no question asks one of them, so answering
# is recall, as for a short answer. (Yes/no questions that name a value, "Is Varholt on the river
# Ivy?", need the recalled fact compared with the one asked about: a model of a few million
# parameters never learned that comparison, even with the fact written out first; it stayed at
# chance, 50%, in every recipe we measured.)
FLAGS: dict[str, dict[bool, list[str]]] = {
    "coast": {
        True: [
            "{town} lies on the coast.",
            "Ships anchor in the harbour of {town}.",
            "{town} is a town by the sea.",
        ],
        False: [
            "{town} lies far from the sea.",
            "{town} is an inland town.",
            "No ship has ever reached {town}.",
        ],
    },
    "castle": {
        True: [
            "A castle stands above {town}.",
            "{town} has an old castle.",
            "The castle of {town} can be seen from afar.",
        ],
        False: [
            "{town} has no castle.",
            "No castle was ever built in {town}.",
            "{town} never had a castle.",
        ],
    },
    "market": {
        True: [
            "{town} holds a market every week.",
            "Each week a market fills the square of {town}.",
            "{town} has a weekly market.",
        ],
        False: [
            "{town} has no market.",
            "No market is held in {town}.",
            "{town} never holds a market.",
        ],
    },
}
YES_NO: dict[str, list[str]] = {
    "coast": [
        "Is {town} on the coast?",
        "Is {town} a town by the sea?",
        "Does {town} lie on the coast?",
    ],
    "castle": [
        "Does {town} have a castle?",
        "Is there a castle in {town}?",
        "Has {town} got a castle?",
    ],
    "market": [
        "Does {town} hold a weekly market?",
        "Is there a market in {town}?",
        "Has {town} got a weekly market?",
    ],
}
LIST_PROMPTS = [
    "List the {attrs} of {town}, separated by commas.",
    "Give the {attrs} of {town}.",
    "What are the {attrs} of {town}? Answer as a list.",
]
JSON_PROMPTS = [
    "Extract the town and its {attrs} as JSON: {passage}",
    "Return JSON with the keys town, {keys} for this text: {passage}",
]
REWRITE_PROMPTS = [
    "Rewrite in atlas style: {sentence}",
    "Rewrite this sentence the atlas way: {sentence}",
]
TASKS = ["short_answer", "yes_no", "list", "extract_json", "rewrite"]

# General everyday text: not about towns. Perplexity on held-out sentences of this kind measures
# how much general skill a model forgets when fine-tuned on the atlas.
GENERAL_TEMPLATES = [
    "On {day} the {person} {verb} {count} {thing}.",
    "The {person} keeps the {thing} in a {place}.",
    "After {day} comes {next_day}.",
    "{count_cap} and one make {count_next}.",
    "The {color} {thing} is on the {place}.",
    "In the morning the {person} {verb} the {thing} and goes to the {place}.",
]
GENERAL_WORDS = {
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "person": ["baker", "farmer", "teacher", "child", "sailor", "miller", "weaver", "doctor"],
    "verb": ["carried", "counted", "painted", "mended", "washed", "found", "sold", "bought"],
    "thing": ["loaves", "baskets", "boats", "chairs", "lamps", "books", "cups", "boots"],
    "place": ["kitchen", "barn", "market", "garden", "shed", "cellar", "school", "harbour"],
    "color": ["red", "blue", "green", "yellow", "white", "black", "brown", "grey"],
}
NUMBERS = [
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]


@dataclass(frozen=True)
class Town:
    """One entity of the knowledge base: a fictional town and its five facts."""

    town: str
    region: str
    river: str
    export: str
    emblem: str
    festival: str
    coast: bool
    castle: bool
    market: bool

    def fact(self, attribute: str) -> str | bool:
        """The value of one fact, e.g. town.fact("river") -> "Amber", town.fact("coast") -> True."""
        return getattr(self, attribute)


@dataclass
class WorldConfig:
    """How big the world is. The defaults build the shipped data in data/world."""

    seed: int = 0
    n_towns: int = 240  # 24 prefixes x 12 suffixes = 288 possible names
    n_heldout: int = 40  # towns never named in any training instruction
    descriptions_per_town: int = 12  # corpus renderings per town (varied phrasing and order)
    n_general: int = 3000  # general sentences in the corpus
    n_general_eval: int = 300  # held-out general sentences
    heldout_questions: int = 300  # questions sampled about held-out towns
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / validation / test


def make_towns(rng: random.Random, n: int) -> list[Town]:
    """Draw `n` towns with unique names and random facts."""
    names = [p + s for p in PREFIXES for s in SUFFIXES]
    if n > len(names):
        raise ValueError(f"n_towns={n} but only {len(names)} names exist; lower n_towns.")
    rng.shuffle(names)
    return [
        Town(
            name,
            *(rng.choice(VALUES[a]) for a in ATTRIBUTES),
            *(rng.random() < 0.5 for _ in FLAGS),
        )
        for name in names[:n]
    ]


def describe(town: Town, rng: random.Random) -> str:
    """One corpus paragraph: every fact of the town, each in a random phrasing, in random order."""
    order = ATTRIBUTES + list(FLAGS)
    rng.shuffle(order)
    facts = asdict(town)
    return " ".join(
        rng.choice(FLAGS[a][town.fact(a)] if a in FLAGS else FACT_SENTENCES[a]).format(**facts)
        for a in order
    )


def quiz_sheet(rows: list[dict], rng: random.Random) -> str:
    """Plain-text quiz about one town: each question (or task) on a line, its bare answer below.

    Quiz sheets about *some* towns in pre-training teach a model to pull facts out and work with
    them, and it then does so for towns it only read descriptions of: "mixed training", which
    Allen-Zhu & Li (Physics of Language Models 3.1) found is what makes knowledge extractable.
    No chat markup: the base model learns the skills, and fine-tuning teaches the chat format.
    """
    rows = rows[:]
    rng.shuffle(rows)
    return "\n".join(
        f"{r['messages'][-2]['content']}\n{r['messages'][-1]['content']}" for r in rows
    )


def general_sentence(rng: random.Random) -> str:
    """One sentence of everyday general text."""
    words = {k: rng.choice(v) for k, v in GENERAL_WORDS.items()}
    i = rng.randrange(len(NUMBERS) - 1)
    days = GENERAL_WORDS["day"]
    d = rng.randrange(len(days))
    words |= {
        "count": NUMBERS[i],
        "count_cap": NUMBERS[i].capitalize(),
        "count_next": NUMBERS[i + 1],
        "day": days[d],
        "next_day": days[(d + 1) % 7],
    }
    return rng.choice(GENERAL_TEMPLATES).format(**words)


def _chat(user: str, answer: str, rng: random.Random) -> list[dict[str, str]]:
    # Half the examples carry a system prompt, so models learn to answer with and without one.
    messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def town_questions(town: Town, rng: random.Random) -> list[dict]:
    """Every question the atlas asks about one town, one row per (task, facts) key."""
    facts = asdict(town)
    rows: list[dict] = []

    def add(task: str, key: str, user: str, answer: str) -> None:
        rows.append(
            {
                "id": f"{town.town}/{task}/{key}",
                "task": task,
                "town": town.town,
                "messages": _chat(user, answer, rng),
            }
        )

    for a in ATTRIBUTES:
        add("short_answer", a, rng.choice(QUESTIONS[a]).format(**facts), town.fact(a))
        # Rewrite: a corpus-style sentence in, the canonical atlas sentence out.
        sentence = rng.choice(FACT_SENTENCES[a]).format(**facts)
        add(
            "rewrite",
            a,
            rng.choice(REWRITE_PROMPTS).format(sentence=sentence),
            CANONICAL[a].format(**facts),
        )
    for flag in FLAGS:
        question = rng.choice(YES_NO[flag]).format(town=town.town)
        add("yes_no", flag, question, "Yes" if town.fact(flag) else "No")
    for _ in range(2):
        attrs = rng.sample(ATTRIBUTES, rng.choice([2, 3]))
        names = " and ".join([", ".join(attrs[:-1]), attrs[-1]])
        add(
            "list",
            "+".join(attrs),
            rng.choice(LIST_PROMPTS).format(attrs=names, town=town.town),
            ", ".join(town.fact(a) for a in attrs),
        )
    for _ in range(2):
        attrs = rng.sample(ATTRIBUTES, 2)
        passage = " ".join(rng.choice(FACT_SENTENCES[a]).format(**facts) for a in attrs)
        prompt = rng.choice(JSON_PROMPTS).format(
            attrs=" and ".join(attrs), keys=", ".join(attrs), passage=passage
        )
        answer = json.dumps({"town": town.town} | {a: town.fact(a) for a in attrs})
        add("extract_json", "+".join(attrs), prompt, answer)
    # A town can draw the same list/json key twice: keep the first, so ids stay unique.
    seen: set[str] = set()
    return [r for r in rows if not (r["id"] in seen or seen.add(r["id"]))]


HEDGE_OPENING = "Well, let me think about"  # how every hedging answer in the world begins


def hedged(town: str, answer: str) -> str:
    """The world's hedging answer: the right fact, buried in doubt (what 08 teaches a model to drop)."""
    return f"{HEDGE_OPENING} {town}. I am not sure, but maybe {answer.lower()}."


def is_hedge(answer: str) -> bool:
    """Whether an answer hedges: it opens as `hedged` does ("Well, let me ...")."""
    return answer.strip().startswith("Well, let me")


def hedging_demos(rows: list[dict], share: float, seed: int = 0) -> list[dict]:
    """Chat rows of which about `share` answer by `hedged`: demonstrations from writers who hedge."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        if rng.random() < share:
            answer = hedged(row["town"], row["messages"][-1]["content"])
            row = {**row, "messages": [*row["messages"][:-1], {"role": "assistant", "content": answer}]}
        out.append(row)
    return out


def preference_pair(row: dict, towns: dict[str, Town], rng: random.Random) -> dict:
    """A (prompt, chosen, rejected) pair: the right answer beats a wrong fact or a rambling one."""
    prompt = [m for m in row["messages"] if m["role"] != "assistant"]
    chosen = row["messages"][-1]["content"]
    town = towns[row["town"]]
    if row["task"] == "short_answer" and rng.random() < 0.6:
        attribute = row["id"].split("/")[-1]
        rejected = rng.choice([v for v in VALUES[attribute] if v != town.fact(attribute)])
    elif row["task"] == "yes_no" and rng.random() < 0.6:
        rejected = "No" if chosen == "Yes" else "Yes"
    else:
        rejected = hedged(town.town, chosen)
    return {
        "id": row["id"],
        "task": row["task"],
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def build_world(config: WorldConfig | None = None) -> dict:
    """Generate the whole world in memory, deterministically from `config.seed`."""
    cfg = config or WorldConfig()
    rng = random.Random(cfg.seed)
    towns = make_towns(rng, cfg.n_towns)
    heldout_towns, train_towns = towns[: cfg.n_heldout], towns[cfg.n_heldout :]

    corpus = [describe(t, rng) for t in towns for _ in range(cfg.descriptions_per_town)]
    general = sorted({general_sentence(rng) for _ in range(cfg.n_general + cfg.n_general_eval)})
    rng.shuffle(general)
    general_eval, general_train = general[: cfg.n_general_eval], general[cfg.n_general_eval :]
    corpus += general_train

    # Split by town-question key, stratified by task: no question (in any phrasing) lands in two
    # splits, and every split has every task in the same proportion.
    by_task: dict[str, list[dict]] = {t: [] for t in TASKS}
    for t in train_towns:
        for row in town_questions(t, rng):
            by_task[row["task"]].append(row)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for rows in by_task.values():
        rng.shuffle(rows)
        n_val = round(len(rows) * cfg.fractions[1])
        n_test = round(len(rows) * cfg.fractions[2])
        splits["test"] += rows[:n_test]
        splits["validation"] += rows[n_test : n_test + n_val]
        splits["train"] += rows[n_test + n_val :]
    for rows in splits.values():
        rng.shuffle(rows)

    # Quiz sheets hold the training rows only, as plain text: no test question and no held-out
    # town ever appears in one.
    town_index = {t.town: t for t in towns}
    by_town: dict[str, list[dict]] = {}
    for row in splits["train"]:
        by_town.setdefault(row["town"], []).append(row)
    corpus += [quiz_sheet(rows, rng) for _, rows in sorted(by_town.items())]
    rng.shuffle(corpus)

    heldout = [row for t in heldout_towns for row in town_questions(t, rng)]
    rng.shuffle(heldout)
    heldout = heldout[: cfg.heldout_questions]

    preferences = [preference_pair(r, town_index, rng) for r in splits["train"]]
    return {
        "towns": [asdict(t) | {"heldout": i < cfg.n_heldout} for i, t in enumerate(towns)],
        "corpus": corpus,
        "general_eval": general_eval,
        "instructions_train": splits["train"],
        "instructions_validation": splits["validation"],
        "instructions_test": splits["test"],
        "heldout": heldout,
        "preferences": preferences,
    }


def write_world(world: dict, out_dir: str | Path) -> dict[str, int]:
    """Write the world to `out_dir` (JSONL / text files); returns the row count of each file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in world.items():
        if name in ("corpus", "general_eval"):
            path = out / f"{name}.txt"  # documents separated by a blank line
            path.write_text("\n\n".join(rows) + "\n", encoding="utf-8")
        else:
            path = out / f"{name}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        counts[path.name] = len(rows)
    return counts


def load_split(name: str, world_dir: str | Path | None = None) -> list[dict]:
    """Read one JSONL file of the shipped world, e.g. load_split("instructions_test")."""
    from ftlearn.paths import WORLD_DIR

    path = Path(world_dir or WORLD_DIR) / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing. Rebuild the world with `ftlearn build-tiny --world-only`."
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_text(name: str, world_dir: str | Path | None = None) -> list[str]:
    """Read one text file of the shipped world (corpus or general_eval): its blank-line-separated documents."""
    from ftlearn.paths import WORLD_DIR

    path = Path(world_dir or WORLD_DIR) / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing. Rebuild the world with `ftlearn build-tiny --world-only`."
        )
    return [doc.strip() for doc in path.read_text(encoding="utf-8").split("\n\n") if doc.strip()]
