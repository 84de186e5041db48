"""Chat templates, loss masks and the end of a turn: the token ids a trainer reads (02_datasets, 03_sft); padding and packing are `ftlearn.packing`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

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
    messages = example["messages"]
    out = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    mask = _unweighted_turns_masked(out["assistant_masks"], messages)
    # Cut the end, as TRL's default truncation_mode="keep_start" does.
    ids, mask = out["input_ids"][:max_length], mask[:max_length]
    labels = [i if m else -100 for i, m in zip(ids, mask)]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "assistant_masks": mask,
        "labels": labels,
    }


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    """(start, end) of every run of 1s in a mask."""
    edges = [i for i, (a, b) in enumerate(zip([0, *mask], [*mask, 0])) if a != b]
    return list(zip(edges[::2], edges[1::2]))


def _unweighted_turns_masked(mask: list[int], messages: list[dict]) -> list[int]:
    """The assistant mask with the answers of weight 0 (OpenAI's format) taken out of the loss."""
    weights = [t.get("weight", 1) for t in messages if t["role"] == "assistant"]
    if all(w != 0 for w in weights):
        return list(mask)
    spans = _spans(mask)  # one {% generation %} block per assistant turn, in order
    if len(spans) != len(weights):
        raise ValueError(
            f"The chat template marks {len(spans)} spans for {len(weights)} assistant turns, so "
            "ftlearn cannot tell which tokens belong to the weight-0 turns. Use a template with "
            "one {% generation %} block per assistant turn (with_generation_markers gives ChatML one)."
        )
    mask = list(mask)
    for (start, end), weight in zip(spans, weights):
        if weight == 0:
            mask[start:end] = [0] * (end - start)
    return mask


def row_length(row: Mapping, tokenizer=None) -> int:
    """Tokens of the templated chat (or text) with a tokenizer; characters of the content without."""
    if "messages" not in row:
        return len(tokenizer(row["text"])["input_ids"]) if tokenizer else len(row["text"])
    if tokenizer is None:
        return sum(len(t["content"]) for t in row["messages"])
    return len(tokenizer.apply_chat_template(row["messages"], return_dict=False))


def token_lengths(dataset: Dataset | Iterable[Mapping], tokenizer) -> list[int]:
    """Token count of every row: its templated chat, or its text for a pre-training row."""
    return [row_length(row, tokenizer) for row in dataset]


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


# ----------------------------------------------------------------------------- end of turn

# Where the libraries decide whether a fine-tuned model learns to stop (trl 1.16.0, transformers 5.24.0):
# - TRL's SFTTrainer takes eos as pad when the tokenizer has none (trl/trainer/sft_trainer.py:969),
#   as ftlearn.models.load does; its collator pads labels with -100 by position, not by token id
#   (trl/trainer/sft_trainer.py:202), so there pad == eos keeps the end-of-turn label.
# - transformers' DataCollatorForLanguageModeling(mlm=False) makes labels from input_ids and sets
#   every token equal to pad_token_id to -100 (transformers/data/data_collator.py:800): with
#   pad == eos every end of turn leaves the loss (and any answer-only mask is ignored).
# - With assistant_only_loss=True, TRL only logs a warning when the {% generation %} mask leaves
#   the end-of-turn token out (trl/trainer/sft_trainer.py:948, chat_template_utils.py:927).
OWN_PAD = (
    "give the tokenizer a pad token of its own: tokenizer.pad_token = '<|pad|>' if the "
    "vocabulary has one, else tokenizer.add_special_tokens({{'pad_token': '<|pad|>'}}) and "
    "model.resize_token_embeddings(len(tokenizer))"
)
TEMPLATE_CHECKS = {  # check: (problem, fix); {stop} is the end-of-turn token, {rows} where it was seen
    "stop": (
        "no end-of-turn token {stop} after the assistant's answer in {rows}: the model never "
        "sees where an answer ends",
        "end the assistant turn with the end-of-turn token in the chat template (ChatML: "
        "{{{{ message['content'] + '<|im_end|>' }}}}), or pass stop_token_ids= the ids generation "
        "stops on (model.generation_config.eos_token_id) if they are not eos_token",
    ),
    "markers": (
        "the chat template has no {{% generation %}} markers and is not plain ChatML, so no "
        "assistant mask can be made (TRL 1.16 swaps in a training template only for the "
        "families it knows: trl/trainer/sft_trainer.py:941)",
        "train on prompt/completion rows (completion_only_loss, as ftlearn.training does), or use "
        "a template with {{% generation %}} around the answer and its end-of-turn token",
    ),
    "mask": (
        "the {{% generation %}} loss mask leaves the end-of-turn token {stop} out in {rows}: the "
        "model is never trained to emit it, and the loss looks healthy all the same",
        "move the end-of-turn token inside {{% generation %}}...{{% endgeneration %}} (as "
        "ftlearn.tokenizer.CHAT_TEMPLATE does), or train on prompt/completion rows",
    ),
    "completion": (
        "the completion (what completion_only_loss trains: the chat after the prompt rendered "
        "with add_generation_prompt=True) has no end-of-turn token {stop} in {rows}",
        "make the prompt a prefix of the chat and end the answer with the end-of-turn token",
    ),
    "pad": (
        "{pad} is the end-of-turn token, and {who} sets the label of every pad-id token to -100 "
        "(transformers/data/data_collator.py:800): in 2 collated examples {n} end-of-turn labels "
        "were masked, so the model never learns to stop",
        OWN_PAD + ", or keep TRL's SFTTrainer collator",
    ),
    "pad_risk": (
        "{pad} is the end-of-turn token. {who} keeps its label (labels are padded with -100 by "
        "position: trl/trainer/sft_trainer.py:202), but a collator that masks labels equal to "
        "pad_token_id (transformers' DataCollatorForLanguageModeling) drops every end of turn",
        OWN_PAD + " before you use another collator",
    ),
    "collator": (
        "{who} {how}: in 2 collated examples {detail}",
        "use a collator that keeps the rows' labels and pads them with -100 by position (TRL's "
        "SFTTrainer collator: trl.trainer.sft_trainer.DataCollatorForLanguageModeling)",
    ),
}
LOSSES = ("assistant", "completion", "both")


@dataclass
class TemplateProblem:
    """One way a chat template, tokenizer or collator keeps the model from learning to stop."""

    check: str  # a key of TEMPLATE_CHECKS
    problem: str
    fix: str
    severity: str = "error"  # "warning": harmless in this setup, a trap in a common other one

    def __str__(self) -> str:
        return f"{self.severity} ({self.check}): {self.problem}. Fix: {self.fix}."


class TemplateError(ValueError):
    """A chat template or tokenizer that would train a model that does not stop."""


@dataclass
class TemplateReport:
    """What check_template found, each problem with its fix; `ok` when there is no error."""

    name: str
    n_rows: int
    checked: str  # what was checked, in words
    problems: list[TemplateProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def add(self, check: str, severity: str = "error", **values) -> None:
        """Record a problem of TEMPLATE_CHECKS[check], its text filled in with `values`."""
        problem, fix = (text.format(**values) for text in TEMPLATE_CHECKS[check])
        self.problems.append(TemplateProblem(check.removesuffix("_risk"), problem, fix, severity))

    def __str__(self) -> str:
        lines = [f"{self.name}, {self.n_rows} conversations: {self.checked}"]
        if not self.problems:
            return lines[0] + "\n  no problems."
        n_err = sum(p.severity == "error" for p in self.problems)
        lines.append(f"  {n_err} error(s), {len(self.problems) - n_err} warning(s):")
        return "\n".join(lines + [f"  - {p}" for p in self.problems])

    def raise_if_errors(self) -> None:
        """Raise a TemplateError listing the problems, if any is an error."""
        if not self.ok:
            raise TemplateError(str(self))


def _last_real(ids: list[int], tokenizer) -> int | None:
    """The last token of ids that is not whitespace (a template's line break after the stop)."""
    return next((t for t in reversed(ids) if tokenizer.decode([t]).strip()), None)


def _after_answers(tokenizer, messages: list[dict]) -> list[tuple[int | None, str]]:
    """For each assistant turn: the first non-blank token the template puts after it, and the text."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    found, pos = [], 0
    for turn in messages:  # in order: an answer repeated in a question is not mistaken for it
        content = turn["content"] if turn["content"] in text[pos:] else turn["content"].strip()
        start = text.find(content, pos)  # some templates (Llama 3's) trim the content
        if start < 0:
            raise ValueError(f"The chat template does not render {content!r} verbatim.")
        pos = start + len(content)
        if turn["role"] == "assistant":
            pairs = zip(enc["input_ids"], enc["offset_mapping"])
            after = [t for t, (a, b) in pairs if a >= pos and text[a:b].strip()]
            found.append((after[0] if after else None, text[pos : pos + 24]))
    return found


def check_template(
    tokenizer,
    rows: Iterable[Mapping] | None = None,
    loss: str = "both",
    collator=None,
    stop_token_ids: Iterable[int] | None = None,
) -> TemplateReport:
    """Find, before training, what would keep the model from learning to stop; each with its fix.

    On a few chat `rows` (the template is the same for all): an end-of-turn token after every
    answer; that token inside the loss mask of `loss`: "assistant" (the {% generation %} mask:
    tokenize_chat, TRL's assistant_only_loss), "completion" (prompt/completion rows:
    ftlearn.training, TRL's completion_only_loss) or "both"; and its label after `collator`
    (default: TRL's SFTTrainer collator, whose import takes a few seconds the first time) pads
    a batch, where pad == eos can mask it.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    rows = list(rows) if rows is not None else [{"messages": m} for m in _PROBES]
    stop = set(stop_token_ids) if stop_token_ids is not None else {tokenizer.eos_token_id} - {None}
    text = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(stop)) or "(none)"
    name = Path(tokenizer.name_or_path).name or type(tokenizer).__name__
    report = TemplateReport(name, len(rows), f"end of turn {text}, loss masks: {loss}")
    if not tokenizer.chat_template or not stop:
        report.add("stop", stop=text, rows="every conversation (no chat template or eos_token)")
        return report
    marked = None
    if loss != "completion":
        try:
            marked = with_generation_markers(tokenizer)
            if marked is not tokenizer:
                report.checked += " (no {% generation %} markers: with_generation_markers' copy)"
        except ValueError:
            report.add("markers", "error" if loss == "assistant" else "warning")
    seen: dict[str, dict[str, str]] = {"stop": {}, "mask": {}, "completion": {}}  # check: id: what
    examples = []  # answer-only labels, for the collator
    for i, row in enumerate(rows):
        rid = str(row.get("id") or f"#{i}")
        chat = [{"role": t["role"], "content": t["content"]} for t in row["messages"]]
        for token, after in _after_answers(tokenizer, chat):
            if token not in stop:
                seen["stop"].setdefault(rid, f"the answer is followed by {after!r}")
        if rid in seen["stop"]:
            continue  # the masks cannot hold a token the template never writes
        if marked is not None:
            enc = marked.apply_chat_template(
                chat, return_dict=True, return_assistant_tokens_mask=True
            )
            ids, mask = enc["input_ids"], enc["assistant_masks"]
            for start, end in _spans(mask) or [(0, 0)]:
                if (last := _last_real(ids[start:end], tokenizer)) not in stop:
                    shown = tokenizer.decode([last]) if last is not None else ""
                    nxt = tokenizer.decode(ids[end : end + 1])
                    seen["mask"].setdefault(rid, f"the mask ends at {shown!r}, before {nxt!r}")
            examples.append(
                {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]}
            )
        if loss != "assistant":
            k = max(j for j, t in enumerate(chat) if t["role"] == "assistant")
            prompt = tokenizer.apply_chat_template(
                chat[:k], add_generation_prompt=True, return_dict=False
            )
            full = tokenizer.apply_chat_template(chat[: k + 1], return_dict=False)
            # The completion starts where the two diverge, as TRL finds it (sft_trainer.py:1352).
            n = next((j for j, (a, b) in enumerate(zip(prompt, full)) if a != b), len(prompt))
            if _last_real(full[n:], tokenizer) not in stop:
                seen["completion"][rid] = f"the completion is {tokenizer.decode(full[n:])!r}"
            if marked is None:
                examples.append({"input_ids": full, "labels": [-100] * n + full[n:]})
    for check, where in seen.items():
        if where:
            first = next(iter(where))
            rows_text = f"{len(where)}/{len(rows)} conversations (e.g. {first}: {where[first]})"
            report.add(check, stop=text, rows=rows_text)
    _check_collator(tokenizer, examples, stop, collator, report)
    return report


def _check_collator(tokenizer, examples: list[dict], stop: set, collator, report) -> None:
    """Collate the shortest and longest example (one gets padded): do the stop labels survive?"""
    pad_id = tokenizer.pad_token_id
    pad = pad_id if pad_id is not None else tokenizer.eos_token_id  # as TRL and models.load do
    pad_text = f"the pad token {tokenizer.convert_ids_to_tokens(pad)!r}"
    pad_text += " (none set: TRL and ftlearn.models.load take eos)" if pad_id is None else ""
    if collator is None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(pad_token_id=pad)  # as SFTTrainer makes it
        who = "TRL's SFTTrainer collator"
    else:
        who = type(collator).__name__
    report.checked += f"; {pad_text}; collator: {who}"
    if not examples:
        return  # no answer ends with a stop token: the other checks said why
    ordered = sorted(examples, key=lambda e: len(e["input_ids"]))
    short = ordered[0]
    if len(short["input_ids"]) == len(ordered[-1]["input_ids"]):  # one shorter copy gets padded
        short = {"input_ids": short["input_ids"][1:], "labels": short["labels"][1:]}
    batch = [short, ordered[-1]]
    try:
        out, kept = collator(batch), True
    except (ValueError, TypeError, KeyError):  # transformers' collators make their own labels
        plain = [
            {"input_ids": e["input_ids"], "attention_mask": [1] * len(e["input_ids"])}
            for e in batch
        ]
        out, kept = collator(plain), False
    lost = trained = 0
    for e, got_ids, got in zip(batch, out["input_ids"].tolist(), out["labels"].tolist()):
        n = len(e["input_ids"])
        off = 0 if got_ids[:n] == e["input_ids"] else len(got_ids) - n  # right or left padding
        for t, want, label in zip(e["input_ids"], e["labels"], got[off : off + n]):
            lost += want != -100 and t in stop and label == -100
            trained += want == -100 and label != -100
    if pad in stop:
        report.add(
            "pad" if lost else "pad_risk",
            "error" if lost else "warning",
            pad=pad_text,
            who=who,
            n=lost,
        )
    detail = [f"{lost} end-of-turn labels were masked"] if lost and pad not in stop else []
    detail += [f"{trained} prompt tokens carry loss"] if trained else []
    if detail:
        how = "makes its own labels from input_ids" if not kept else "changes the rows' labels"
        report.add("collator", who=who, how=how, detail=" and ".join(detail))
