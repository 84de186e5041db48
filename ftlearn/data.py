"""Preparing a domain-specific chat dataset: load, validate, clean, split (02_datasets).

Every row ends in the chat format TRL's SFTTrainer reads:
`{"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "task": str}`.
Files, and the formats people bring in them (OpenAI chat, ShareGPT, Alpaca, TRL's
prompt/completion), are read and recognised by `ftlearn.formats`. Nothing is dropped silently:
loaders raise a `DatasetError` listing every bad row, `validate(...).formats` counts what became of
every field, and `clean` reports what each step removed and why. What the rows become as tokens
(chat templates, loss masks, `check_template`, padding and packing) is `ftlearn.templates`; its
names can be imported from here too.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from ftlearn.formats import READERS, ROLES, FormatReport, read_text, to_chat

# Only row_length is used here; the rest is re-exported, because notebooks and learners' code
# import them as `from ftlearn.data import tokenize_chat, check_template, ...`.
from ftlearn.packing import PackingStats, PaddingStats, packing_stats, padding_stats  # noqa: F401
from ftlearn.templates import (  # noqa: F401
    GENERATION_MARKER,
    LOSSES,
    OWN_PAD,
    TEMPLATE_CHECKS,
    TemplateError,
    TemplateProblem,
    TemplateReport,
    TruncationReport,
    check_template,
    row_length,
    show_loss_mask,
    token_lengths,
    tokenize_chat,
    truncation_report,
    with_generation_markers,
)

MAX_LISTED = 20  # problems spelled out in a DatasetError; the rest are counted
FIX = {
    "structure": "each row needs 'messages': a list of {'role': ..., 'content': ...} turns",
    "role": "give every turn a 'role': one of system, user, assistant",
    "unknown_role": "use one of system, user, assistant; rename other roles when loading",
    "type": "write the content as text (json.dumps structured data)",
    "empty": "fill in the text or drop the turn",
    "order": "order turns as [system], user, assistant, user, ... (system only first)",
    "assistant": "add the answer as an assistant turn, or drop the row",
    "weight": "set weight 1 on the answer(s) to learn, or drop the row",
    "length": "shorten it, raise max_length, or drop it with clean(max_length=...)",
    "id": "give every row a unique id",
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
    formats: FormatReport | None = None  # what became of every field (validate fills it)

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
    if not any(t["role"] == "assistant" and t.get("weight", 1) for t in messages):
        return [("every assistant turn has weight 0, so nothing to learn from", FIX["weight"])]
    return []


def _row_problems(row: Any, tokenizer, max_length: int | None) -> list[tuple[str, str]]:
    """Problems of one row: its type, its messages (or text), its length."""
    if not isinstance(row, dict):
        return [(f"row is {type(row).__name__}, not an object", FIX["structure"])]
    if "messages" in row:
        found = _turn_problems(row["messages"])
    else:  # a continued-pre-training row (ftlearn.formats gives every other row its messages)
        ok = isinstance(row["text"], str) and row["text"].strip()
        found = [] if ok else [("text is empty or not a string", FIX["empty"])]
    if not found and max_length is not None and (n := row_length(row, tokenizer)) > max_length:
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


# ----------------------------------------------------------------------------- loading


def _read(data: Any, source: str | None, mapping: dict) -> tuple[list, list[Problem], str, Any]:
    """Read a path, list of rows or Dataset into (where, chat row) pairs, problems, a FormatReport."""
    if (
        mapping.get("prompt_field") is None
        and mapping.get("response_field", "response") != "response"
    ):
        raise ValueError("response_field names the answer of a prompt_field mapping: give both")
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix not in READERS:
            raise ValueError(f"{path}: cannot read {path.suffix!r} files; use {', '.join(READERS)}")
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        rows, unreadable = READERS[path.suffix](path)
        source = source or str(path)
        problems = [Problem(source, where, p, fix) for where, p, fix in unreadable]
    else:
        rows = list(enumerate(data.to_list() if isinstance(data, Dataset) else data))
        rows, problems, source = [(f"index {i}", r) for i, r in rows], [], source or "dataset"
    mapped, report = [], FormatReport()
    for where, row in rows:
        converted = to_chat(row, **mapping)
        report.add(converted)
        rid = row.get("id") if isinstance(row, dict) else None
        problems += [Problem(source, where, p, fix, rid) for p, fix in converted.problems]
        if not converted.problems:
            mapped.append((where, converted.row))
    return mapped, problems, source, report


def validate(
    data: Any, tokenizer=None, max_length: int | None = None, source: str | None = None, **mapping
) -> ValidationReport:
    """Every problem of a file, rows or Dataset; max_length counts tokens, or chars sans tokenizer.

    `.formats` of the report counts, field by field, what loading would do with each row's data.
    """
    rows, problems, source, formats = _read(data, source, mapping)
    problems += _check(rows, source, tokenizer, max_length)
    problems.sort(key=lambda p: int(p.where.split()[1]))  # file order, reading problems included
    return ValidationReport(source, formats.n_rows, problems, formats)


def _to_dataset(rows: list[dict]) -> Dataset:
    # Dataset.from_list takes its columns from the first row only; a dict of columns keeps them all.
    # Arrow stores the turns as one struct type, so a key on any turn becomes a key of every turn,
    # None where it was missing. `weight` is the only optional turn key (ftlearn.formats refuses
    # others): where it is missing it gets its meaning (1 on an answer, 0 elsewhere: no loss).
    if any(isinstance(t, dict) and "weight" in t for r in rows for t in r.get("messages") or []):
        rows = [{**r, "messages": [_weighted(t) for t in r["messages"]]} for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})


def _weighted(turn: dict) -> dict:
    if turn.get("weight") is not None:
        return turn
    return {**turn, "weight": int(turn["role"] == "assistant")}


def load_chat(
    data: Any,
    prompt_field: str | None = None,
    response_field: str = "response",
    system_prompt: str | None = None,
    source: str | None = None,
    drop_fields: Iterable[str] = (),
) -> Dataset:
    """Load a .jsonl/.csv/.json/.txt file, list of rows or Dataset; raise listing every bad row.

    The format is recognised by the fields (ftlearn.formats); prompt_field/response_field map
    any other pair of fields; drop_fields leaves fields out on purpose (row or turn fields).
    """
    mapping = {
        "prompt_field": prompt_field,
        "response_field": response_field,
        "system_prompt": system_prompt,
        "drop_fields": tuple(drop_fields),
    }
    rows, problems, source, formats = _read(data, source, mapping)
    ValidationReport(source, formats.n_rows, problems + _check(rows, source)).raise_if_errors()
    if isinstance(data, (str, Path)):  # rows without an id get one pointing back at the file
        for where, row in rows:
            if "messages" in row:
                row.setdefault("id", f"{Path(data).name}:{where.split()[1]}")
    return _to_dataset([row for _, row in rows])


def load_jsonl(path: str | Path, **mapping) -> Dataset:
    """Load JSONL rows in any recognised format, or mapped fields (mapping as in load_chat)."""
    return load_chat(Path(path), **mapping)


def load_csv(path: str | Path, prompt_field: str | None = None, **mapping) -> Dataset:
    """Load a CSV file: prompt/response or Alpaca columns, or any pair mapped with prompt_field=."""
    return load_chat(Path(path), prompt_field=prompt_field, **mapping)


def load_chat_history(
    path: str | Path, system_prompt: str | None = None, drop_fields: Iterable[str] = ()
) -> Dataset:
    """Load a chat export: a JSON list of conversations (ShareGPT from/value turns accepted)."""
    return load_chat(Path(path), system_prompt=system_prompt, drop_fields=drop_fields)


def from_dataset(dataset: Dataset | list[dict], **mapping) -> Dataset:
    """Pass an in-memory or Hugging Face Dataset through the same mapping and checks as a file."""
    return load_chat(dataset, **mapping)


def load_text(path: str | Path, split_by: str = "paragraph") -> Dataset:
    """Load plain text for continued pre-training: a `text` column, one paragraph (or line) a row."""
    rows, unreadable = read_text(Path(path), split_by)
    problems = [Problem(str(path), where, p, fix) for where, p, fix in unreadable]
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
            return not lo <= row_length(row, tokenizer) <= hi

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
