"""ftlearn.templates.check_template on the course tokenizer and on copies broken the ways that stop a model stopping."""

from __future__ import annotations

import copy
import re

import pytest
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from ftlearn import profiles, world
from ftlearn.models import resolve
from ftlearn.templates import TemplateError, check_template, tokenize_chat
from ftlearn.tokenizer import CHAT_TEMPLATE, IM_END

ANSWER = "{{ message['content'] + '<|im_end|>' }}"  # the assistant's turn in CHAT_TEMPLATE
assert CHAT_TEMPLATE.count(ANSWER) == 1  # the broken copies below edit exactly this


@pytest.fixture(scope="module")
def tok():
    # The course tokenizer as the tiny profile ships it: tokenizer files only, no weights.
    return AutoTokenizer.from_pretrained(resolve(profiles.get("tiny"), "base"))


@pytest.fixture(scope="module")
def rows():
    return world.load_split("instructions_train")[:8]  # one- and two-turn rows, with system or not


def broken(tok, template: str | None = None, pad_is_eos: bool = False):
    copied = copy.deepcopy(tok)
    if template is not None:
        copied.chat_template = template
    if pad_is_eos:
        copied.pad_token = copied.eos_token
    return copied


# The template writes no <|im_end|> after the answer: generation has nothing to stop on.
NO_STOP = CHAT_TEMPLATE.replace(ANSWER, "{{ message['content'] }}")
# <|im_end|> is written, but after {% endgeneration %}: outside the assistant mask.
STOP_OUTSIDE = CHAT_TEMPLATE.replace(
    ANSWER + "{% endgeneration %}", "{{ message['content'] }}{% endgeneration %}{{ '<|im_end|>' }}"
)


def checks(report) -> list[tuple[str, str]]:
    return [(p.check, p.severity) for p in report.problems]


def test_the_course_tokenizer_passes(tok, rows):
    # The course template puts <|im_end|> inside {% generation %} (ftlearn/tokenizer.py), pad is
    # its own token <|pad|>: nothing to report.
    report = check_template(tok, rows)
    assert report.ok and report.problems == [], str(report)
    assert str(report).endswith("no problems.") and "'<|pad|>'" in str(report)
    report.raise_if_errors()
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert tokenize_chat(rows[0], tok)["labels"][-2] == im_end  # the stop carries loss ("\n" last)


def test_a_template_without_end_of_turn_is_an_error_naming_the_fix(tok, rows):
    report = check_template(broken(tok, NO_STOP), rows)
    assert checks(report) == [("stop", "error")] and not report.ok
    (problem,) = report.problems
    assert problem.problem.startswith("no end-of-turn token '<|im_end|>' after the assistant's")
    assert (
        f"8/8 conversations (e.g. {rows[0]['id']}: the answer is followed by '\\n"
        in problem.problem
    )
    assert "end the assistant turn with the end-of-turn token" in problem.fix
    with pytest.raises(TemplateError, match=r"error \(stop\)"):
        report.raise_if_errors()


def test_end_of_turn_outside_the_generation_mask_is_an_error(tok, rows):
    bad = broken(tok, STOP_OUTSIDE)
    assert bad.apply_chat_template(rows[0]["messages"], tokenize=False) == tok.apply_chat_template(
        rows[0]["messages"], tokenize=False
    )  # the same text: only the mask differs
    report = check_template(bad, rows)
    assert checks(report) == [("mask", "error")]
    assert "the mask ends at " in report.problems[0].problem and "before '<|im_end|>'" in str(
        report
    )
    assert "inside {% generation %}" in report.problems[0].fix
    # Prompt/completion rows (ftlearn.training: completion_only_loss) still train the stop token.
    assert check_template(bad, rows, loss="completion").ok


def test_the_mask_check_agrees_with_trl(tok, rows):
    # TRL 1.16 makes the same check at SFTTrainer init with assistant_only_loss=True (a warning).
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    for template in (CHAT_TEMPLATE, NO_STOP, STOP_OUTSIDE):
        t = broken(tok, template)
        found = {p.check for p in check_template(t, rows, loss="assistant").problems}
        assert bool(found & {"stop", "mask"}) == (not is_chat_template_stop_token_trained(t))


def test_pad_equal_to_eos_is_harmless_with_trl_and_an_error_with_a_pad_masking_collator(tok, rows):
    pad_eos = broken(tok, pad_is_eos=True)
    # With TRL's own collator the stop label survives: a warning, not an error.
    report = check_template(pad_eos, rows)
    assert checks(report) == [("pad", "warning")] and report.ok
    assert "keeps its label" in report.problems[0].problem
    # transformers' collator sets every pad-id label to -100: with pad == eos, every <|im_end|>.
    hf = DataCollatorForLanguageModeling(pad_eos, mlm=False)
    batch = hf([{"input_ids": tokenize_chat(r, pad_eos)["input_ids"]} for r in rows[:2]])
    im_end = batch["input_ids"] == pad_eos.eos_token_id
    assert im_end.any() and (batch["labels"][im_end] == -100).all()  # the library fact
    report = check_template(pad_eos, rows, collator=hf)
    assert checks(report) == [("pad", "error"), ("collator", "error")] and not report.ok
    assert re.search(r"in 2 collated examples [1-9]\d* end-of-turn labels were masked", str(report))
    assert "tokenizer.pad_token = '<|pad|>'" in report.problems[0].fix
    # With the course's own pad token the same collator keeps <|im_end|> (and still trains the prompt).
    assert checks(check_template(tok, rows, collator=hf)) == [("collator", "error")]


def test_no_pad_token_counts_as_eos_as_trl_does(tok, rows):
    no_pad = broken(tok)
    no_pad.pad_token = None
    report = check_template(no_pad, rows)
    assert checks(report) == [("pad", "warning")] and "none set" in report.problems[0].problem


def test_a_template_that_cannot_be_marked_is_an_error_only_for_assistant_masks(tok, rows):
    llama_like = (
        "{% for m in messages %}{{ '<|start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant\n' }}{% endif %}"
    )
    t = broken(tok, llama_like)
    assert checks(check_template(t, rows)) == [("markers", "warning")]
    assert checks(check_template(t, rows, loss="assistant")) == [("markers", "error")]
    assert check_template(t, rows, loss="completion").problems == []


def test_without_rows_it_checks_its_own_probes_and_refuses_unknown_losses(tok):
    assert check_template(tok).n_rows == 2 and check_template(broken(tok, NO_STOP)).problems
    with pytest.raises(ValueError, match="loss must be one of"):
        check_template(tok, loss="answer")
