"""The formats people bring their data in, read from their files, recognised by their fields, made chat rows (02_datasets).

Files are read by their extension (`READERS`): JSONL, one row a line; CSV, a header and a row a
record (a cell holds text, so prompt/response or Alpaca columns); JSON, a list of conversations
(a chat export); plain text, a row a paragraph or a line. Every row keeps where it came from
("line 7", as editors count); a line that is not UTF-8, not JSON or not a whole CSV record is a
problem of its own, and the lines after it are still read. The rows' fields then say the format:

| format                | a row's fields                            | becomes                         |
|-----------------------|-------------------------------------------|---------------------------------|
| chat (OpenAI)         | messages: [{role, content, weight?}]      | the same turns                  |
| ShareGPT              | conversations: [{from, value}]            | human: user, gpt: assistant     |
| Alpaca                | instruction, input (may be empty), output | user: instruction, blank, input |
| TRL prompt/completion | prompt, completion: strings, or turns     | user + assistant, or the turns  |
| prompt/response       | prompt, response (the CSV default)        | user + assistant                |
| text                  | text                                      | a continued-pre-training row    |

Alpaca's `input` is the context the answer needs: it is joined to the instruction after a blank
line (Alpaca's own prompt puts it there, under "### Input:"; the chat template marks the turn, so
the headers are left out). An empty `input` adds nothing. A row-level `system` string becomes the
system turn. A string prompt/completion pair becomes a user and an assistant turn, so the chat
template applies and ftlearn.training's prompt/completion rows put the loss on the completion
(TRL's `completion_only_loss`); a conversational pair keeps its turns, and its completion must be
the one assistant turn to learn.

`weight` (OpenAI's fine-tuning format: 0 or 1 on an assistant turn) is kept on the turn: a weight-0
answer stays as context and carries no loss. `ftlearn.templates.tokenize_chat` masks it; turns
after the last weight-1 answer are cut at loading (no loss reaches them, and in a causal model they
change nothing before them), so ftlearn.training, which trains a row's last assistant turn, never
trains a weight-0 one (its `to_dataset` refuses a row built by hand that ends in one). TRL's SFTTrainer itself has no per-turn weights (trl 1.16 never reads `weight`): fed
these rows directly with `assistant_only_loss=True`, it would train the weight-0 answers too.
Arrow gives every turn of a Dataset the same keys, so once a turn has a weight, every turn gets
one: 1 on an answer that had none, 0 on the other turns (they carry no loss), never None.

Refused, each with the row and the fix: a row that matches two formats; fields a mapping would
leave behind; tool calls (`tool_calls`, `role: tool`, `tools`), which the course's ChatML template
cannot render; turn fields ftlearn does not train on (`name`, ...), unless `drop_fields` names
them. Nothing is dropped silently: `FormatReport` counts, for every field, the rows in which it
was used, joined, found empty, kept as a column (not trained on) or dropped.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
# ShareGPT exports say "from": "human"/"gpt" and "value" where the chat format says role/content.
ROLE_ALIASES = {"human": "user", "gpt": "assistant"}
FORMATS = {  # name: the fields that identify it
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "prompt_response": ("prompt", "response"),
}
CONTENT = {**FORMATS, "alpaca": ("instruction", "input", "output")}  # what each format trains on
TURN_FIELDS = ("role", "content", "weight")
# Tool use: OpenAI's tool_calls/tool_call_id/function_call and role "tool"/"function", Llama 3's
# "ipython", the ShareGPT tool exports' "function_call"/"observation" turns, the row's tool list.
TOOL_TURN_FIELDS = ("tool_calls", "tool_call_id", "function_call")
TOOL_ROLES = ("tool", "function", "ipython", "function_call", "observation")
TOOL_ROW_FIELDS = ("tools", "functions")
JOIN = "\n\n"  # between Alpaca's instruction and its input
ACTIONS = {  # what happened to a field: the report's columns
    "used": "in the conversation the model is trained on",
    "joined": "added to the instruction, after a blank line",
    "empty": "empty: nothing to add",
    "kept": "kept as a column, not in the conversation",
    "dropped": "left out on purpose (drop_fields)",
    "cut": "turns after the last weight-1 answer cut (no loss reaches them)",
}
FIX = {
    "two_formats": "keep the fields of one format (drop_fields=[...] leaves the others out, counted)",
    "left_behind": (
        "load it without prompt_field/response_field (the format is recognised), or leave those "
        "fields out on purpose with drop_fields=[...]"
    ),
    "mapping": (
        "map a prompt/response pair with prompt_field=... and response_field=..., or use a format "
        "ftlearn recognises: messages; conversations; instruction/input/output; prompt/completion"
    ),
    "tools": (
        "leave tool calls out of the course data (drop the row, or keep only the turns before the "
        "first call). To fine-tune tool use, pick a model whose chat template renders tools "
        "(trl.chat_template_utils.supports_tool_calling(tokenizer)) and train it with TRL's "
        "SFTTrainer on rows with 'tools' and 'tool_calls'"
    ),
    "weight": "set weight 0 (no loss on the turn: context only) or 1 (learn it), on assistant turns",
    "type": "write the text as a string (json.dumps structured data)",
    "completion": "make the completion the one assistant turn to learn; put the turns before it in prompt",
    "system": "keep one system prompt: the row's 'system' field or a system turn",
    "json": "write one complete JSON object per line (look for a missing quote, comma, bracket)",
    "utf8": "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)",
    "csv": "quote fields that contain commas or line breaks",
}


@dataclass
class Converted:
    """One row in the chat format, what became of each of its fields, or why it cannot be used."""

    row: Any
    format: str | None = None  # None: not a dict, left to the row checks
    problems: list[tuple[str, str]] = field(default_factory=list)  # (problem, fix)
    uses: list[tuple[str, str]] = field(default_factory=list)  # (field, action in ACTIONS)


@dataclass
class FormatReport:
    """Rows of each format, and for every field the rows in which it was used, joined, kept, dropped."""

    n_rows: int = 0
    formats: Counter = field(default_factory=Counter)
    fields: Counter = field(default_factory=Counter)  # (field, action) -> rows

    def add(self, converted: Converted) -> None:
        """Count one converted row; a refused one only as refused (its problems say why)."""
        self.n_rows += 1
        if converted.problems:
            self.formats["refused"] += 1
            return
        self.formats[converted.format or "not an object"] += 1
        self.fields.update(converted.uses)  # each (field, action) once a row: to_chat dedupes

    def count(self, name: str, action: str | None = None) -> int:
        """Rows in which field `name` had `action` done to it (any action if None)."""
        return sum(n for (f, a), n in self.fields.items() if f == name and action in (None, a))

    def __str__(self) -> str:
        kinds = ", ".join(f"{name} {n}" for name, n in self.formats.most_common())
        lines = [f"{self.n_rows} rows: {kinds}"]
        names = list(dict.fromkeys(f for f, _ in self.fields))
        actions = [a for a in ACTIONS if any(act == a for _, act in self.fields)]
        if not names:
            return lines[0]
        width = max(len("field"), *map(len, names))
        lines.append(f"{'field':<{width}}" + "".join(f"{a:>9}" for a in actions))
        for name in names:
            counts = (self.fields.get((name, a), 0) or "-" for a in actions)
            lines.append(f"{name:<{width}}" + "".join(f"{c:>9}" for c in counts))
        lines += [f"  {a}: {ACTIONS[a]}" for a in actions]
        return "\n".join(lines)


def _present(row: dict) -> list[str]:
    """The row's fields that hold something: Arrow writes None where a row lacked a column."""
    return [k for k, v in row.items() if v is not None]


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def detect(row: dict) -> list[str]:
    """The formats whose identifying fields the row has (more than one: ambiguous)."""
    present = set(_present(row))
    return [name for name, keys in FORMATS.items() if present.issuperset(keys)]


def _unmatched(row: dict) -> str:
    """The "no format" problem, with the formats the row half matches."""
    present = _present(row)
    half = [
        f"{name} needs {' and '.join(keys)}"
        for name, keys in FORMATS.items()
        if len(keys) > 1 and any(k in present for k in keys)
    ]
    hint = f"; {', '.join(half)}" if half else ""
    return f"no 'messages' field (fields: {', '.join(map(str, row))}){hint}"


def to_chat(
    row: Any,
    prompt_field: str | None = None,
    response_field: str = "response",
    system_prompt: str | None = None,
    drop_fields: Iterable[str] = (),
) -> Converted:
    """One raw row in the chat format (or as text), with the fate of each field or the problems."""
    if not isinstance(row, dict):
        return Converted(row)  # reported by the row checks
    out = _convert(dict(row), prompt_field, response_field, system_prompt, set(drop_fields))
    order = {name: i for i, name in enumerate(row)}  # the report lists fields as the row has them
    out.uses = sorted(dict.fromkeys(out.uses), key=lambda u: order.get(u[0].split("[")[0], 0))
    return out


def _convert(row: dict, prompt_field, response_field, system_prompt, drop: set[str]) -> Converted:
    out = Converted(row)
    for name in [k for k in row if k in drop]:
        del row[name]
        out.uses.append((name, "dropped"))
    if tools := [k for k in TOOL_ROW_FIELDS if row.get(k)]:
        out.problems.append(
            (f"the row lists tools ({', '.join(tools)}): {_NO_TOOLS}", FIX["tools"])
        )
        return out
    formats = detect(row)
    if prompt_field is not None:
        out.format = "mapped"
        missing = [f for f in (prompt_field, response_field) if f not in row]
        if missing:
            problem = f"no {' or '.join(map(repr, missing))} field (fields: {', '.join(row)})"
            out.problems.append((problem, FIX["mapping"]))
            return out
        used = {prompt_field, response_field}
        behind = [
            f for fmt in formats for f in CONTENT[fmt] if f not in used and not _empty(row.get(f))
        ]
        if behind:
            names = ", ".join(dict.fromkeys(behind))
            problem = (
                f"{names} would be left out: the row is {'/'.join(formats)} "
                f"({', '.join(f for fmt in formats for f in CONTENT[fmt] if f in row)}), and "
                f"prompt_field={prompt_field!r}, response_field={response_field!r} use only those two"
            )
            out.problems.append((problem, FIX["left_behind"]))
            return out
        turns = [_turn("user", row.pop(prompt_field)), _turn("assistant", row.pop(response_field))]
        out.uses += [(prompt_field, "used"), (response_field, "used")]
    elif len(formats) > 1:
        fields = "; ".join(f"{fmt} ({', '.join(FORMATS[fmt])})" for fmt in formats)
        out.problems.append((f"fields of {len(formats)} formats: {fields}", FIX["two_formats"]))
        return out
    elif formats:
        out.format = formats[0]
        turns = _CONVERTERS[out.format](row, out)
        if out.problems:
            return out
    elif "text" in _present(row):
        out.format = "text"
        out.uses.append(("text", "used"))
        out.uses += [(k, "kept") for k, v in row.items() if k != "text" and v is not None]
        return out
    else:
        out.problems.append((_unmatched(row), FIX["mapping"]))
        return out
    if isinstance(turns, list):
        turns = _check_turns(turns, out, drop)
        if not out.problems:
            turns = _with_system(turns, row.pop("system", None), system_prompt, out)
        if out.problems:
            return out
    row["messages"] = turns
    out.uses += [(k, "kept") for k, v in row.items() if k != "messages" and v is not None]
    return out


def _with_system(turns: list, system: Any, system_prompt: str | None, out: Converted) -> list:
    """The turns with the row's `system` field, else `system_prompt`, as a first system turn."""
    has_system = bool(turns) and isinstance(turns[0], dict) and turns[0].get("role") == "system"
    if system is not None and _empty(system):
        out.uses.append(("system", "empty"))
    elif system is not None:
        if has_system:
            out.problems.append(("a 'system' field and a system turn", FIX["system"]))
            return turns
        out.uses.append(("system", "used"))
        return [_turn("system", system), *turns]
    if system_prompt and not has_system:
        return [_turn("system", system_prompt), *turns]
    return turns


def _turn(role: str, content: Any) -> dict:
    return {"role": role, "content": content}


def _chat(row: dict, out: Converted) -> Any:
    out.uses.append(("messages", "used"))
    return row.pop("messages")


def _sharegpt(row: dict, out: Converted) -> Any:
    out.uses.append(("conversations", "used"))
    return row.pop("conversations")


def _alpaca(row: dict, out: Converted) -> Any:
    instruction, context, output = row.pop("instruction"), row.pop("input", None), row.pop("output")
    out.uses += [("instruction", "used"), ("output", "used")]
    prompt = instruction
    if context is not None and not isinstance(context, str):
        out.problems.append((f"input is {type(context).__name__}, not a string", FIX["type"]))
    elif not _empty(context):
        prompt = f"{instruction}{JOIN}{context}" if isinstance(instruction, str) else instruction
        out.uses.append(("input", "joined"))
    elif context is not None:
        out.uses.append(("input", "empty"))
    return [_turn("user", prompt), _turn("assistant", output)]


def _prompt_completion(row: dict, out: Converted) -> Any:
    prompt, completion = row.pop("prompt"), row.pop("completion")
    out.uses += [("prompt", "used"), ("completion", "used")]
    if isinstance(prompt, str) and isinstance(completion, str):
        return [_turn("user", prompt), _turn("assistant", completion)]
    if isinstance(prompt, list) and isinstance(completion, list):
        roles = [t.get("role", t.get("from")) if isinstance(t, dict) else None for t in completion]
        if [ROLE_ALIASES.get(r, r) for r in roles] != ["assistant"]:
            problem = (
                f"the completion is {len(completion)} turn(s) ({', '.join(map(str, roles))}); "
                "ftlearn trains a row's last assistant turn, TRL would train all of them"
            )
            out.problems.append((problem, FIX["completion"]))
        return prompt + completion
    kinds = f"prompt is {type(prompt).__name__}, completion is {type(completion).__name__}"
    problem = f"{kinds}: TRL reads two strings or two lists of turns"
    out.problems.append((problem, "write both as strings, or both as lists of turns"))
    return None


def _prompt_response(row: dict, out: Converted) -> Any:
    out.uses += [("prompt", "used"), ("response", "used")]
    return [_turn("user", row.pop("prompt")), _turn("assistant", row.pop("response"))]


_CONVERTERS = {
    "chat": _chat,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "prompt_response": _prompt_response,
}
_NO_TOOLS = (
    "tool-calling turns are not supported: the course's ChatML template has no syntax for tool "
    "calls or results, so they would be trained as empty or mislabelled turns"
)


def _check_turns(turns: list, out: Converted, drop: set[str]) -> list:
    """Turns as role/content(/weight) dicts: ShareGPT keys renamed, tool use and unknown keys refused.

    What a turn lacks or holds of the wrong type is left to the structure checks (ftlearn.data),
    which report every such problem with its fix.
    """
    source = "conversations" if out.format == "sharegpt" else "messages"  # the report's name
    result, tools = [], []  # tools: the turns that call or answer a tool
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            result.append(turn)
            continue
        turn = {k: v for k, v in turn.items() if v is not None}  # Arrow's padding: absent
        for name in [k for k in turn if k in drop]:
            del turn[name]
            out.uses.append((f"{source}[].{name}", "dropped"))
        for old, new in (("from", "role"), ("value", "content")):
            if new not in turn and old in turn:
                turn[new] = turn.pop(old)
        role = turn.get("role")
        if isinstance(role, str) and role in ROLE_ALIASES:
            role = turn["role"] = ROLE_ALIASES[role]
        calls = [k for k in TOOL_TURN_FIELDS if turn.get(k) not in (None, [], "")]
        if role in TOOL_ROLES or calls:
            tools.append(f"{n} ({f'role {role!r}' if role in TOOL_ROLES else ', '.join(calls)})")
            continue
        for name in turn:
            if name not in TURN_FIELDS:
                problem = f"turn {n} has a field {name!r} that ftlearn does not train on"
                fix = f"leave it out with drop_fields=[{name!r}] (the report counts it), or fold it into the content"
                out.problems.append((problem, fix))
        if "weight" in turn:
            _check_weight(turn, n, out, source)
        result.append(turn)
    if tools:
        problem = f"turn{'s' * (len(tools) > 1)} {', '.join(tools)}: {_NO_TOOLS}"
        out.problems.insert(0, (problem, FIX["tools"]))
    if not out.problems:
        result = _cut_after_last_trained(result, out, source)
    return result


def _check_weight(turn: dict, n: int, out: Converted, source: str) -> None:
    weight, role = turn["weight"], turn.get("role")
    if not isinstance(weight, (int, float)) or weight not in (0, 1):
        problem = f"turn {n} has weight {weight!r}; OpenAI's format allows 0 or 1"
        out.problems.append((problem, FIX["weight"]))
    elif role != "assistant" and weight != 0:
        problem = f"turn {n} ({role}) has weight {weight!r}: only assistant turns carry loss"
        out.problems.append((problem, FIX["weight"]))
    else:
        turn["weight"] = int(weight)
        out.uses.append((f"{source}[].weight", "used"))


def _cut_after_last_trained(turns: list, out: Converted, source: str) -> list:
    """Turns up to the last weight-1 answer: what follows carries no loss and changes nothing before it."""
    if not any(isinstance(t, dict) and "weight" in t for t in turns):
        return turns
    trained = [
        i
        for i, t in enumerate(turns)
        if isinstance(t, dict) and t.get("role") == "assistant" and t.get("weight", 1) == 1
    ]
    if trained and trained[-1] < len(turns) - 1:  # no weight-1 answer: the row checks say so
        out.uses.append((source, "cut"))
        return turns[: trained[-1] + 1]
    return turns


# ----------------------------------------------------------------------------- files

Unreadable = tuple[str, str, str]  # (where, problem, fix) of a line that cannot be read as a row
Read = tuple[list[tuple[str, Any]], list[Unreadable]]  # the (where, raw row) pairs, and those lines


def _decode_lines(path: Path) -> tuple[list[str], list[Unreadable]]:
    """The file's lines, with a problem naming each line that is not valid UTF-8."""
    lines, problems = [], []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            # utf-8-sig: Excel and Notepad may start a file with a byte-order mark, not content
            lines.append(raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            bad = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            problems.append((f"line {n}", bad, FIX["utf8"]))
            lines.append(raw.decode("utf-8", errors="replace"))  # read on, to report every line
    return lines, problems


def read_jsonl(path: Path) -> Read:
    """One JSON object a line; a line that is not one is a problem, and the others are still read."""
    lines, problems = _decode_lines(path)
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue  # a blank line is no row (many files end with one)
        try:
            rows.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            bad = f"malformed JSON: {e.msg} at column {e.colno}"
            problems.append((f"line {n}", bad, FIX["json"]))
    return rows, problems


def read_csv(path: Path) -> Read:
    """A header, then one row a record (a quoted field may span lines), each a dict of its columns."""
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
            problems.append((where, bad, FIX["csv"]))
            continue
        rows.append((where, dict(zip(header, record))))
    return rows, problems


def read_json(path: Path) -> Read:
    """A chat-history export: a JSON list of conversations (lists of turns, or dicts holding one)."""
    lines, problems = _decode_lines(path)
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as e:
        bad = (f"line {e.lineno}", f"malformed JSON: {e.msg}", FIX["json"])
        return [], [*problems, bad]
    if not isinstance(data, list):
        fix = "export a list of conversations"
        return [], [*problems, ("line 1", "top level is not a list", fix)]
    rows = [
        (f"index {i}", {"messages": c} if isinstance(c, list) else c) for i, c in enumerate(data)
    ]
    return rows, problems


def read_text(path: Path, split_by: str = "paragraph") -> Read:
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


READERS = {".jsonl": read_jsonl, ".csv": read_csv, ".json": read_json, ".txt": read_text}
