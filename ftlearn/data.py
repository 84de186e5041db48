"""Preparing a domain-specific chat dataset: load, validate, clean, split, tokenize, pack (02_datasets).

Every row ends in the chat format TRL's SFTTrainer reads:
`{"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "task": str}`.
Nothing is dropped silently: loaders raise a `DatasetError` listing every bad row, and `clean`
reports what each step removed and why.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

ROLES = ("system", "user", "assistant")
# ShareGPT exports say "from": "human"/"gpt" and "value" where the chat format says role/content.
ROLE_ALIASES = {"human": "user", "gpt": "assistant"}
MAX_LISTED = 20  # problems spelled out in a DatasetError; the rest are counted
FIX = {
    "structure": "each row needs 'messages': a list of {'role': ..., 'content': ...} turns",
    "role": "give every turn a 'role': one of system, user, assistant",
    "unknown_role": "use one of system, user, assistant; rename other roles when loading",
    "type": "write the content as text (json.dumps structured data)",
    "empty": "fill in the text or drop the turn",
    "order": "order turns as [system], user, assistant, user, ... (system only first)",
    "assistant": "add the answer as an assistant turn, or drop the row",
    "mapping": "map a prompt/response pair with prompt_field=... and response_field=...",
    "length": "shorten it, raise max_length, or drop it with clean(max_length=...)",
    "id": "give every row a unique id",
    "json": "write one complete JSON object per line (look for a missing quote, comma, bracket)",
    "utf8": "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)",
    "csv": "quote fields that contain commas or line breaks",
}

# ----------------------------------------------------------------------------- validation


@dataclass
class Problem:
    """One bad row: where it is, what is wrong with it, and how to fix it."""

    source: str
    where: str  # "line 7" in a JSONL/CSV/text file (1-based, as editors count), else "index 7"
    problem: str
    fix: str
    id: str | None = None

    def __str__(self) -> str:
        ident = f" (id {self.id!r})" if self.id is not None else ""
        return f"{self.source}, {self.where}{ident}: {self.problem}. Fix: {self.fix}."


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message lists every problem found."""


@dataclass
class ValidationReport:
    """Every problem found in a dataset, not only the first."""

    source: str
    n_rows: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"{self.source}: {self.n_rows} rows, no problems."
        lines = [f"{len(self.problems)} problem(s) in {self.source} ({self.n_rows} rows):"]
        lines += [f"  - {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more (see .problems)")
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raise a DatasetError listing the problems, if there are any."""
        if not self.ok:
            raise DatasetError(str(self))


def _turn_problems(messages: Any) -> list[tuple[str, str]]:
    """Structural problems of one conversation, as (problem, fix) pairs."""
    if not isinstance(messages, list):
        return [(f"'messages' is {type(messages).__name__}, not a list", FIX["structure"])]
    if not messages:
        return [("'messages' is empty", FIX["structure"])]
    found = []
    for n, turn in enumerate(messages, 1):
        if not isinstance(turn, dict):
            found.append((f"turn {n} is {type(turn).__name__}, not a dict", FIX["structure"]))
            continue
        role, content = turn.get("role"), turn.get("content")
        if role is None:
            found.append((f"turn {n} has no role", FIX["role"]))
        elif role not in ROLES:
            found.append((f"turn {n} has unknown role {role!r}", FIX["unknown_role"]))
        if not isinstance(content, str):
            kind = type(content).__name__
            found.append((f"turn {n} content is {kind}, not a string", FIX["type"]))
        elif not content.strip():
            found.append((f"turn {n} ({role}) has empty content", FIX["empty"]))
    if found:
        return found  # the order checks below need every role known
    expected = "user"  # after an optional first system turn, user and assistant alternate
    for n, role in enumerate((t["role"] for t in messages), 1):
        if role == "system" and n > 1:
            return [(f"turn {n} is a system turn; system may only come first", FIX["order"])]
        if role != "system" and role != expected:
            return [(f"turn {n} is {role!r} where {expected!r} was expected", FIX["order"])]
        if role != "system":
            expected = "assistant" if role == "user" else "user"
    if not any(t["role"] == "assistant" for t in messages):
        return [("no assistant turn, so nothing to learn from", FIX["assistant"])]
    return []


def _length(row: Mapping, tokenizer=None) -> int:
    """Tokens of the templated chat (or text) with a tokenizer; characters of the content without."""
    if "messages" not in row:
        return len(tokenizer(row["text"])["input_ids"]) if tokenizer else len(row["text"])
    if tokenizer is None:
        return sum(len(t["content"]) for t in row["messages"])
    return len(tokenizer.apply_chat_template(row["messages"], return_dict=False))


def _row_problems(row: Any, tokenizer, max_length: int | None) -> list[tuple[str, str]]:
    """Problems of one row: its type, its messages (or text), its length."""
    if not isinstance(row, dict):
        return [(f"row is {type(row).__name__}, not an object", FIX["structure"])]
    if "messages" in row:
        found = _turn_problems(row["messages"])
    elif "text" in row:  # a continued-pre-training row
        ok = isinstance(row["text"], str) and row["text"].strip()
        found = [] if ok else [("text is empty or not a string", FIX["empty"])]
    else:
        found = [(f"no 'messages' field (fields: {', '.join(map(str, row))})", FIX["mapping"])]
    if not found and max_length is not None and (n := _length(row, tokenizer)) > max_length:
        unit = "tokens" if tokenizer else "characters"
        found.append((f"{n} {unit}, over max_length={max_length}", FIX["length"]))
    return found


def _check(rows: list[tuple[str, Any]], source: str, tokenizer=None, max_length=None) -> list:
    """Problems of (where, row) pairs already read, duplicate ids included."""
    problems, first_seen = [], {}
    for where, row in rows:
        rid = row.get("id") if isinstance(row, dict) else None
        found = _row_problems(row, tokenizer, max_length)
        if rid is not None and rid in first_seen:
            found.insert(0, (f"duplicate id, first used at {first_seen[rid]}", FIX["id"]))
        first_seen.setdefault(rid, where)
        problems += [Problem(source, where, problem, fix, rid) for problem, fix in found]
    return problems


# ----------------------------------------------------------------------------- reading


def _decode_lines(path: Path) -> tuple[list[str], list[Problem]]:
    """The file's lines, with a problem naming each line that is not valid UTF-8."""
    lines, problems = [], []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            # utf-8-sig: Excel and Notepad may start a file with a byte-order mark, not content
            lines.append(raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            bad = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            problems.append(Problem(str(path), f"line {n}", bad, FIX["utf8"]))
            lines.append(raw.decode("utf-8", errors="replace"))  # read on, to report every line
    return lines, problems


def _read_jsonl(path: Path) -> tuple[list, list[Problem]]:
    lines, problems = _decode_lines(path)
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue  # a blank line is no row (many files end with one)
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            bad = f"malformed JSON: {e.msg} at column {e.colno}"
            problems.append(Problem(str(path), f"line {n}", bad, FIX["json"]))
    return rows, problems


def _read_csv(path: Path) -> tuple[list, list[Problem]]:
    lines, problems = _decode_lines(path)
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header, rows, end = next(reader, []), [], reader.line_num
    for record in reader:
        # A quoted field may span lines: a record starts on the line after the previous one ended.
        where, end = f"line {end + 1}", reader.line_num
        if not any(record):
            continue
        if len(record) != len(header):
            bad = f"{len(record)} fields, header has {len(header)}"
            problems.append(Problem(str(path), where, bad, FIX["csv"]))
            continue
        rows.append((where, dict(zip(header, record))))
    return rows, problems


def _read_json(path: Path) -> tuple[list, list[Problem]]:
    """A chat-history export: a JSON list of conversations (lists of turns, or dicts holding one)."""
    lines, problems = _decode_lines(path)
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as e:
        bad = Problem(str(path), f"line {e.lineno}", f"malformed JSON: {e.msg}", FIX["json"])
        return [], [*problems, bad]
    if not isinstance(data, list):
        fix = "export a list of conversations"
        return [], [*problems, Problem(str(path), "line 1", "top level is not a list", fix)]
    rows = [
        (f"index {i}", {"messages": c} if isinstance(c, list) else c) for i, c in enumerate(data)
    ]
    return rows, problems


def _read_text(path: Path, split_by: str = "paragraph") -> tuple[list, list[Problem]]:
    """Plain text as {"text"} rows: paragraphs (separated by blank lines, joined) or single lines."""
    if split_by not in ("paragraph", "line"):
        raise ValueError(f"split_by must be 'paragraph' or 'line', not {split_by!r}")
    lines, problems = _decode_lines(path)
    rows, chunk = [], []  # chunk: (line number, text) of the paragraph being read
    for n, line in enumerate([*lines, ""], 1):
        if line.strip():
            chunk.append((n, line.strip()))
        if chunk and (split_by == "line" or not line.strip()):
            rows.append((f"line {chunk[0][0]}", {"text": " ".join(t for _, t in chunk)}))
            chunk = []
    return rows, problems


READERS = {".jsonl": _read_jsonl, ".csv": _read_csv, ".json": _read_json, ".txt": _read_text}


def _to_chat(row: Any, prompt_field=None, response_field="response", system_prompt=None):
    """Map one raw row to the chat format; returns (row, problem or None)."""
    if not isinstance(row, dict):
        return row, None  # reported by _check
    row = dict(row)
    if prompt_field is not None:
        missing = [f for f in (prompt_field, response_field) if f not in row]
        if missing:
            return row, f"no {' or '.join(map(repr, missing))} field (fields: {', '.join(row)})"
        user, answer = row.pop(prompt_field), row.pop(response_field)
        row["messages"] = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ]
    elif "messages" not in row and "conversations" in row:  # ShareGPT's column name
        row["messages"] = row.pop("conversations")
    if isinstance(row.get("messages"), list):
        turns = [_sharegpt_turn(t) for t in row["messages"]]
        has_system = turns and isinstance(turns[0], dict) and turns[0].get("role") == "system"
        if system_prompt and not has_system:
            turns.insert(0, {"role": "system", "content": system_prompt})
        row["messages"] = turns
    return row, None


def _sharegpt_turn(turn: Any) -> Any:
    """A ShareGPT turn (from/value, human/gpt) as role/content; anything else is left to _check."""
    if not isinstance(turn, dict):
        return turn
    turn = dict(turn)
    for old, new in (("from", "role"), ("value", "content")):
        if new not in turn and old in turn:
            turn[new] = turn.pop(old)
    if turn.get("role") in ROLE_ALIASES:
        turn["role"] = ROLE_ALIASES[turn["role"]]
    return turn


def _read(data: Any, source: str | None, mapping: dict) -> tuple[list, list[Problem], str]:
    """Read a path, list of rows or Dataset into (where, chat row) pairs and reading problems."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix not in READERS:
            raise ValueError(f"{path}: cannot read {path.suffix!r} files; use {', '.join(READERS)}")
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        if path.suffix == ".csv" and mapping.get("prompt_field") is None:
            mapping = {**mapping, "prompt_field": "prompt"}  # a CSV cell cannot hold a message list
        rows, problems = READERS[path.suffix](path)
        source = source or str(path)
    else:
        rows = list(enumerate(data.to_list() if isinstance(data, Dataset) else data))
        rows, problems, source = [(f"index {i}", r) for i, r in rows], [], source or "dataset"
    mapped = []
    for where, row in rows:
        row, problem = _to_chat(row, **mapping)
        if problem:
            problems.append(Problem(source, where, problem, FIX["mapping"], row.get("id")))
        else:
            mapped.append((where, row))
    return mapped, problems, source


def validate(
    data: Any, tokenizer=None, max_length: int | None = None, source: str | None = None, **mapping
) -> ValidationReport:
    """Every problem of a file, rows or Dataset; max_length counts tokens, or chars sans tokenizer."""
    rows, problems, source = _read(data, source, mapping)
    problems += _check(rows, source, tokenizer, max_length)
    problems.sort(key=lambda p: int(p.where.split()[1]))  # file order, reading problems included
    return ValidationReport(source, len(rows), problems)


def _to_dataset(rows: list[dict]) -> Dataset:
    # Dataset.from_list takes its columns from the first row only; a dict of columns keeps them all.
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})


def load_chat(
    data: Any,
    prompt_field: str | None = None,
    response_field: str = "response",
    system_prompt: str | None = None,
    source: str | None = None,
) -> Dataset:
    """Load a .jsonl/.csv/.json/.txt file, list of rows or Dataset; raise listing every bad row."""
    fields = {"prompt_field": prompt_field, "response_field": response_field}
    rows, problems, source = _read(data, source, {**fields, "system_prompt": system_prompt})
    ValidationReport(source, len(rows), problems + _check(rows, source)).raise_if_errors()
    if isinstance(data, (str, Path)):  # rows without an id get one pointing back at the file
        for where, row in rows:
            if "messages" in row:
                row.setdefault("id", f"{Path(data).name}:{where.split()[1]}")
    return _to_dataset([row for _, row in rows])


def load_jsonl(path: str | Path, **mapping) -> Dataset:
    """Load JSONL rows in chat format, or prompt/response rows (mapping as in load_chat)."""
    return load_chat(Path(path), **mapping)


def load_csv(path: str | Path, prompt_field: str = "prompt", **mapping) -> Dataset:
    """Load a CSV file with a prompt and a response column (mapping as in load_chat)."""
    return load_chat(Path(path), prompt_field=prompt_field, **mapping)


def load_chat_history(path: str | Path, system_prompt: str | None = None) -> Dataset:
    """Load a chat export: a JSON list of conversations (ShareGPT from/value turns accepted)."""
    return load_chat(Path(path), system_prompt=system_prompt)


def from_dataset(dataset: Dataset | list[dict], **mapping) -> Dataset:
    """Pass an in-memory or Hugging Face Dataset through the same mapping and checks as a file."""
    return load_chat(dataset, **mapping)


def load_text(path: str | Path, split_by: str = "paragraph") -> Dataset:
    """Load plain text for continued pre-training: a `text` column, one paragraph (or line) a row."""
    rows, problems = _read_text(Path(path), split_by)
    ValidationReport(str(path), len(rows), problems).raise_if_errors()
    return _to_dataset([row for _, row in rows])


# ----------------------------------------------------------------------------- cleaning


def normalize_text(text: str) -> str:
    """Near-duplicate key: lowercase, every run of punctuation and whitespace made one space."""
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def normalize_whitespace(text: str) -> str:
    """Strip the ends, \\n line breaks, one space between words, at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    text = re.sub(r"(?<=\S)[ \t]+", " ", text)  # only after a word: indentation (code) is kept
    text = re.sub(r" +\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@dataclass
class CleaningStep:
    """What one cleaning step did: rows in and out, which rows it removed and why."""

    name: str
    reason: str
    rows_in: int
    removed_ids: list[str]
    modified: int = 0  # rows kept but changed

    @property
    def rows_out(self) -> int:
        return self.rows_in - len(self.removed_ids)


@dataclass
class CleaningReport:
    """The steps of `clean`, printed as a table; rows in = rows out + all removed."""

    steps: list[CleaningStep] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'step':<18}{'rows in':>8}{'removed':>9}{'rows out':>10}  removed (why)"]
        for s in self.steps:
            more = " ..." if len(s.removed_ids) > 3 else ""
            note = f"{', '.join(s.removed_ids[:3])}{more} ({s.reason})" if s.removed_ids else "-"
            note += f"; {s.modified} rows modified" if s.modified else ""
            counts = f"{s.rows_in:>8}{len(s.removed_ids):>9}{s.rows_out:>10}"
            lines.append(f"{s.name:<18}{counts}  {note}")
        return "\n".join(lines)


def clean(
    dataset: Dataset,
    tokenizer=None,
    min_length: int | None = None,
    max_length: int | None = None,
    near_duplicates: bool = True,
) -> tuple[Dataset, CleaningReport]:
    """Normalise whitespace, drop duplicates and lengths out of range (tokens, or chars)."""
    rows = dataset.to_list()
    ids = [str(r["id"]) if r.get("id") is not None else f"#{i}" for i, r in enumerate(rows)]
    kept, report = list(range(len(rows))), CleaningReport()

    def step(name: str, reason: str, drop: Callable[[dict], bool]) -> None:
        nonlocal kept
        removed = {i for i in kept if drop(rows[i])}
        gone = [ids[i] for i in sorted(removed)]
        report.steps.append(CleaningStep(name, reason, len(kept), gone))
        kept = [i for i in kept if i not in removed]

    changed = set()
    for i, row in enumerate(rows):
        turns = [{**t, "content": normalize_whitespace(t["content"])} for t in row["messages"]]
        if turns != row["messages"]:
            changed.add(i)
            row["messages"] = turns
    step(
        "whitespace",
        "empty after stripping",
        lambda r: not all(t["content"] for t in r["messages"]),
    )
    report.steps[-1].modified = len(changed.intersection(kept))

    def later_copy(key: Callable[[dict], str]) -> Callable[[dict], bool]:
        seen: set[str] = set()  # the first row with a key stays, later ones go
        return lambda r: (k := key(r)) in seen or seen.add(k)

    step(
        "exact_duplicates",
        "repeats an earlier row",
        later_copy(lambda r: json.dumps(r["messages"])),
    )
    if near_duplicates:  # same words in the same order, whatever the case and punctuation
        near = later_copy(lambda r: normalize_text(" ".join(t["content"] for t in r["messages"])))
        step("near_duplicates", "normalize_text matches an earlier row", near)
    if min_length is not None or max_length is not None:
        lo, hi = min_length or 0, max_length or float("inf")
        unit = "tokens" if tokenizer else "characters"

        def out_of_range(row: dict) -> bool:
            return not lo <= _length(row, tokenizer) <= hi

        step("length", f"outside {lo}..{hi} {unit}", out_of_range)
    return _to_dataset([rows[i] for i in kept]), report


# ----------------------------------------------------------------------------- splitting


def prompt_key(row: Mapping) -> str:
    """The key rows are grouped by in a split: their user turns, through normalize_text."""
    return normalize_text(" ".join(t["content"] for t in row["messages"] if t["role"] == "user"))


def split(
    dataset: Dataset,
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1),
    stratify_by: str | None = "task",
    seed: int = 0,
    key: Callable[[Mapping], str] = prompt_key,
) -> DatasetDict:
    """Train/validation(/test) splits: rows sharing a key stay together; each task in proportion."""
    if len(fractions) not in (2, 3) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 2 or 3 numbers summing to 1, got {fractions}")
    names = ("train", "validation", "test") if len(fractions) == 3 else ("train", "test")
    rows = dataset.to_list()
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[key(row)].append(i)
    strata: dict[str, list[list[int]]] = defaultdict(list)  # a group counts as its first row's task
    for members in groups.values():
        strata[str(rows[members[0]].get(stratify_by)) if stratify_by else ""].append(members)
    rng, chosen = random.Random(seed), {n: [] for n in names}
    for stratum in sorted(strata):
        members = strata[stratum]
        rng.shuffle(members)
        members.sort(key=len, reverse=True)  # big groups first; single rows then even out counts
        total, counts = sum(map(len, members)), dict.fromkeys(names, 0)
        for group in members:  # each group goes to the split furthest below its share
            name = max(names, key=lambda n: fractions[names.index(n)] * total - counts[n])
            counts[name] += len(group)
            chosen[name] += group
    return DatasetDict({n: dataset.select(sorted(chosen[n])) for n in names})


def check_no_leakage(
    splits: Mapping[str, Iterable[Mapping]], key: Callable[[Mapping], str] = prompt_key
) -> list[str]:
    """Keys (normalised prompts) found in more than one split; empty when the splits are clean."""
    seen_in: dict[str, set[str]] = defaultdict(set)
    for name, rows in splits.items():
        for row in rows:
            seen_in[key(row)].add(name)
    return sorted(k for k, names in seen_in.items() if len(names) > 1)


# ----------------------------------------------------------------------------- tokenization


GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Conversations a marked-up template must render exactly as the original does.
_PROBES = [
    [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
    [
        {"role": "system", "content": "S."},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
        {"role": "user", "content": "R?"},
        {"role": "assistant", "content": "B."},
    ],
]


def with_generation_markers(tokenizer):
    """The tokenizer if its chat template marks the assistant's tokens, else a ChatML copy that does."""
    if GENERATION_MARKER.search(tokenizer.chat_template or ""):
        return tokenizer
    import copy

    from ftlearn.tokenizer import CHAT_TEMPLATE

    def render(tok, messages, prompt: bool = False) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    marked = copy.deepcopy(tokenizer)
    marked.chat_template = CHAT_TEMPLATE
    # Some ChatML templates (SmolLM2's) add a default system prompt to chats without one: keep it.
    first = render(tokenizer, _PROBES[0])
    if default := re.match(r"<\|im_start\|>system\n.*?<\|im_end\|>\n", first, re.S):
        literal = json.dumps(default[0])  # JSON's escapes are Jinja's too
        add_default = f"{{% if messages[0]['role'] != 'system' %}}{{{{ {literal} }}}}{{% endif %}}"
        marked.chat_template = add_default + CHAT_TEMPLATE
    cases = [(m, False) for m in _PROBES] + [(m[:-1], True) for m in _PROBES]
    if any(render(marked, m, prompt) != render(tokenizer, m, prompt) for m, prompt in cases):
        raise ValueError(
            f"The chat template of {tokenizer.name_or_path or 'this tokenizer'} is not plain "
            "ChatML, so ftlearn cannot add {% generation %} markers to it safely. Write a copy "
            "with {% generation %}...{% endgeneration %} around the assistant's content (TRL "
            "ships some: trl.chat_template_utils.get_training_chat_template), or train on "
            "prompt/completion rows (completion_only_loss), which need no markers."
        )
    return marked


def tokenize_chat(example: Mapping, tokenizer, max_length: int | None = None) -> dict[str, list]:
    """input_ids, attention_mask, assistant_masks and labels (-100: no loss) of one chat row."""
    if not GENERATION_MARKER.search(tokenizer.chat_template or ""):
        raise ValueError(
            "The tokenizer's chat template has no {% generation %} markers, so transformers cannot "
            "tell which tokens the assistant wrote (the loss mask would be all zeros). Use a template "
            "with the markers (with_generation_markers(tokenizer) adds them to a ChatML one), or "
            "prompt/completion rows, where TRL masks the prompt itself (completion_only_loss)."
        )
    out = tokenizer.apply_chat_template(
        example["messages"], return_dict=True, return_assistant_tokens_mask=True
    )
    # Cut the end, as TRL's default truncation_mode="keep_start" does.
    ids, mask = out["input_ids"][:max_length], out["assistant_masks"][:max_length]
    labels = [i if m else -100 for i, m in zip(ids, mask)]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "assistant_masks": mask,
        "labels": labels,
    }


def token_lengths(dataset: Dataset | Iterable[Mapping], tokenizer) -> list[int]:
    """Token count of every row: its templated chat, or its text for a pre-training row."""
    return [_length(row, tokenizer) for row in dataset]


def show_loss_mask(example: Mapping, tokenizer, max_length: int | None = None) -> str:
    """A token-by-token table with 'loss' beside each token the model is trained to predict."""
    enc = tokenize_chat(example, tokenizer, max_length)
    lines = ["loss  token"]
    for i, m in zip(enc["input_ids"], enc["assistant_masks"]):
        lines.append(f"{'loss' if m else '':4}  {tokenizer.decode([i])!r}")  # repr shows \n, spaces
    return "\n".join(lines)


@dataclass
class TruncationReport:
    """Examples a max_length cuts, and those that lose part or all of the assistant answer."""

    max_length: int
    n_examples: int = 0
    truncated_ids: list[str] = field(default_factory=list)
    answer_cut_ids: list[str] = field(default_factory=list)  # the answer's end (and stop) is gone
    answer_lost_ids: list[str] = field(default_factory=list)  # no answer token left: trains nothing

    def __str__(self) -> str:
        lost = f" (e.g. {', '.join(self.answer_lost_ids[:3])})" if self.answer_lost_ids else ""
        return (
            f"max_length={self.max_length}: {len(self.truncated_ids)}/{self.n_examples} truncated, "
            f"{len(self.answer_cut_ids)} lose part of the answer, "
            f"{len(self.answer_lost_ids)} lose all of it{lost}"
        )


def truncation_report(
    dataset: Dataset | Iterable[Mapping], tokenizer, max_length: int
) -> TruncationReport:
    """How many examples max_length would cut, and how many of those cuts reach the answer."""
    report = TruncationReport(max_length)
    for i, row in enumerate(dataset):
        rid = str(row["id"]) if row.get("id") is not None else f"#{i}"
        mask = tokenize_chat(row, tokenizer)["assistant_masks"]
        report.n_examples += 1
        if len(mask) > max_length:
            report.truncated_ids.append(rid)
            if any(mask[max_length:]):
                report.answer_cut_ids.append(rid)
            if not any(mask[:max_length]):
                report.answer_lost_ids.append(rid)
    return report


# ----------------------------------------------------------------------------- padding vs packing


@dataclass
class PaddingStats:
    """Tokens spent by padded batches: to the longest in each batch, and to max_length."""

    real_tokens: int
    tokens_to_longest: int
    tokens_to_max_length: int

    @property
    def pad_share_longest(self) -> float:
        return 1 - self.real_tokens / self.tokens_to_longest if self.tokens_to_longest else 0.0

    @property
    def pad_share_max_length(self) -> float:
        total = self.tokens_to_max_length
        return 1 - self.real_tokens / total if total else 0.0


def padding_stats(
    lengths: Iterable[int], batch_size: int, max_length: int, sort: bool = False
) -> PaddingStats:
    """Padding cost of batching `lengths` (cut to max_length) in order, or sorted longest first."""
    lengths = [min(n, max_length) for n in lengths]  # truncation comes before batching
    if sort:  # as group_by_length does: similar lengths share a batch
        lengths.sort(reverse=True)
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    longest = sum(len(b) * max(b) for b in batches)
    return PaddingStats(sum(lengths), longest, len(lengths) * max_length)


@dataclass
class PackingStats:
    """Blocks used when whole examples are packed into rows of block_size tokens."""

    block_size: int
    n_sequences: int
    n_blocks: int
    real_tokens: int
    truncated_tokens: int  # cut from examples longer than one block

    @property
    def waste_share(self) -> float:
        total = self.n_blocks * self.block_size
        return 1 - self.real_tokens / total if total else 0.0


def packing_stats(lengths: Iterable[int], block_size: int) -> PackingStats:
    """Greedy best-fit-decreasing packing, as TRL's packing_strategy="bfd": blocks and waste."""
    lengths = list(lengths)
    kept = sorted((min(n, block_size) for n in lengths if n > 0), reverse=True)
    free: list[int] = []  # room left in each block
    for n in kept:
        fits = [b for b, room in enumerate(free) if room >= n]
        if fits:  # the block it fills most tightly
            free[min(fits, key=free.__getitem__)] -= n
        else:
            free.append(block_size - n)
    return PackingStats(block_size, len(lengths), len(free), sum(kept), sum(lengths) - sum(kept))
