"""The field's harness, offline (09_evaluation): lm-evaluation-harness on the course's own test split.

`write_task` writes a task folder (a YAML file per task, the rows as local JSONL, no hub) in the
three forms 09 compares: `"chat"`, the way a harness user would write it (the question alone;
lm-eval applies the chat template and its own exact match); `"ftlearn"`, with ftlearn's prompt
(the row's own messages, rendered by the tokenizer) and ftlearn's `normalize`; and `"choice"`,
a log-likelihood task over `ftlearn.metrics.choice_rows`. `run` evaluates a model already in
memory with lm-eval's `HFLM` and returns the score and each question's result, by row id.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ftlearn.evaluation import prompts_and_answers

KINDS = ("chat", "ftlearn", "choice")
STOP = "<|im_end|>"  # the end of an assistant turn in the course's chat format

_GENERATE = """\
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["{stop}"]
  do_sample: false
  max_gen_toks: {max_new_tokens}
"""
_METRIC_LM_EVAL = """\
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""
_METRIC_FTLEARN = """\
process_results: !function course.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
_CHOICE = """\
output_type: multiple_choice
doc_to_text: "{{prompt}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
_COURSE_PY = '''"""ftlearn's exact match inside lm-eval: the same normalize as ftlearn.evaluation."""
from ftlearn.evaluation import normalize


def process_results(doc, results):
    return {"exact_match": int(normalize(results[0]) == normalize(doc["answer"]))}
'''


def write_task(
    rows: Sequence[dict], folder: str | Path, kind: str, tokenizer=None, max_new_tokens: int = 32
) -> str:
    """Write one lm-eval task over `rows` into `folder`; returns its name (`atlas_<kind>`).

    "ftlearn" and "choice" render each prompt with `tokenizer`'s chat template, as ftlearn does;
    "chat" leaves that to lm-eval (`apply_chat_template=True` in `run`), from the question alone.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}: one of {', '.join(KINDS)}")
    if kind != "chat" and tokenizer is None:
        raise ValueError(f"a {kind!r} task renders its prompts with the model's chat template: pass tokenizer=")
    if kind != "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer has no chat template, so a {kind!r} task cannot render its prompts: "
                         "use a chat model's tokenizer (tiny-instruct's, or the profile's instruct model).")  # fmt: skip
    needed = ("id", "messages", "choices", "gold") if kind == "choice" else ("id", "messages")
    for i, row in enumerate(rows):
        missing = [k for k in needed if k not in row]
        if missing:
            hint = " (make choice rows with ftlearn.metrics.choice_rows)" if kind == "choice" else ""
            raise ValueError(f"row {i} ({row.get('id', 'no id')}) has no {', '.join(missing)}: a {kind!r} task needs {', '.join(needed)}{hint}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"atlas_{kind}"
    prompts, answers = prompts_and_answers(rows)
    with (folder / f"{name}.jsonl").open("w") as f:
        for row, messages, answer in zip(rows, prompts, answers, strict=True):
            if kind == "chat":
                prompt = messages[-1]["content"]  # the question alone: lm-eval adds the chat template
            else:
                prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            doc = {"id": row["id"], "prompt": prompt, "answer": answer}
            if kind == "choice":
                doc |= {"choices": row["choices"], "gold": row["gold"]}
            f.write(json.dumps(doc) + "\n")
    head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {(folder / f'{name}.jsonl').resolve()}\ntest_split: test\n"
    if kind == "choice":
        body = _CHOICE
    else:
        body = _GENERATE.format(stop=STOP, max_new_tokens=max_new_tokens)
        body += _METRIC_LM_EVAL if kind == "chat" else _METRIC_FTLEARN
        (folder / "course.py").write_text(_COURSE_PY)
    (folder / f"{name}.yaml").write_text(head + body + "metadata:\n  version: 1.0\n")
    return name


def run(model, tokenizer, folder: str | Path, task: str, batch_size: int = 32) -> dict:
    """Evaluate `model` on one task of `folder` with lm-eval; returns {"score", "metric", "by_id"}.

    `by_id` maps each row id to its result (1/0) and the model's raw response, for comparing with
    ftlearn question by question. Chat tasks get lm-eval's chat template (`apply_chat_template`).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    for noisy in ("lm_eval", "lm-eval"):  # its notices about a model passed as an object
        logging.getLogger(noisy).setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(next(model.parameters()).device))
    manager = TaskManager(include_path=str(folder), include_defaults=False)  # only the course's tasks
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):  # lm-eval's progress bars: several per task, every time
        out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, apply_chat_template=task == "atlas_chat",
                                      log_samples=True, verbosity="ERROR")  # fmt: skip
    rest = [line for line in captured.getvalue().replace("\r", "\n").splitlines() if line.strip() and "|" not in line]
    if rest:  # anything but a progress bar is shown
        print("\n".join(rest), file=sys.stderr)
    metric = "acc" if task == "atlas_choice" else "exact_match"
    (key,) = [k for k in out["results"][task] if k.startswith(metric + ",")]
    by_id = {}
    for sample in out["samples"][task]:
        response = sample["filtered_resps"][0]
        by_id[sample["doc"]["id"]] = {"hit": int(sample[metric]), "response": response}
    return {"score": float(out["results"][task][key]), "metric": metric, "by_id": by_id}
