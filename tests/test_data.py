"""ftlearn.data (loading, validation messages, cleaning, leak-free splits) and ftlearn.templates' loss
masks, truncation and packing, on a small tokenizer trained on the data fixtures."""

from __future__ import annotations

import ast
import random
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from datasets import Dataset

from ftlearn import data, templates
from ftlearn.data import (
    DatasetError,
    check_no_leakage,
    clean,
    from_dataset,
    load_chat,
    load_chat_history,
    load_csv,
    load_jsonl,
    load_text,
    normalize_text,
    split,
    validate,
)
from ftlearn.packing import packing_stats, padding_stats
from ftlearn.templates import (
    check_template,
    show_loss_mask,
    token_lengths,
    tokenize_chat,
    truncation_report,
    with_generation_markers,
)
from ftlearn.tokenizer import IM_END, train_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def chat(user: str, answer: str, **extra) -> dict:
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {**extra, "messages": turns}


@pytest.fixture(scope="module")
def tok():
    # A few hundred lines of the fixtures' own text: a 400-token BPE trains in well under a second.
    texts = [f.read_text(errors="replace") for f in sorted(FIXTURES.iterdir())]
    return train_tokenizer([line for t in texts for line in t.splitlines()] * 20, vocab_size=400)


# ----------------------------------------------------------------------------- validation

# (line, id, problem, fix): one per bad row of bad_rows.jsonl; line 1 is good, line 12 blank.
BAD_ROWS = [
    (2, None, "malformed JSON", "one complete JSON object per line"),
    (3, "no-role", "turn 1 has no role", "give every turn a 'role'"),
    (4, "unknown-role", "turn 2 has unknown role 'bot'", "use one of system, user, assistant"),
    (5, "system-late", "turn 2 is a system turn", "system only first"),
    (6, "starts-assistant", "turn 1 is 'assistant' where 'user' was expected", "[system], user"),
    (7, "two-users", "turn 2 is 'user' where 'assistant' was expected", "[system], user"),
    (8, "empty-content", "turn 2 (assistant) has empty content", "fill in the text"),
    (9, "content-int", "turn 2 content is int, not a string", "write the content as text"),
    (10, "messages-str", "'messages' is str, not a list", "a list of {'role'"),
    (11, "no-assistant", "no assistant turn", "add the answer as an assistant turn"),
    (13, "good-1", "duplicate id, first used at line 1", "unique id"),
    (14, None, "row is list, not an object", "each row needs 'messages'"),
    (15, "no-messages", "no 'messages' field (fields: id, question, answer)", "prompt_field="),
    (16, "too-long", "457 characters, over max_length=300", "clean(max_length=...)"),
]


def test_validate_reports_every_bad_row_with_line_problem_and_fix():
    report = validate(FIXTURES / "bad_rows.jsonl", max_length=300)
    assert [int(p.where.split()[1]) for p in report.problems] == [line for line, *_ in BAD_ROWS]
    for p, (line, rid, problem, fix) in zip(report.problems, BAD_ROWS):
        text = str(p)
        assert text.startswith(f"{FIXTURES / 'bad_rows.jsonl'}, line {line}"), text
        assert p.id == rid and problem in p.problem and fix in p.fix, text
        assert (f"(id {rid!r})" in text) == (rid is not None) and ". Fix: " in text
    named = validate(FIXTURES / "bad_rows.jsonl", source="bad_rows.jsonl").problems
    assert {p.source for p in named} == {"bad_rows.jsonl"}  # the malformed line's too


def test_load_raises_one_error_listing_every_problem():
    with pytest.raises(DatasetError) as err:
        load_chat(FIXTURES / "bad_rows.jsonl")
    message = str(err.value)
    assert message.startswith("13 problem(s) in ")  # loading checks structure, not length
    for line, *_ in BAD_ROWS[:-1]:
        assert f"line {line}" in message
    assert "line 1:" not in message and "line 1 " not in message


def test_error_message_lists_first_20_and_counts_the_rest():
    rows = [chat("q", "", id=f"r{i}") for i in range(25)]
    report = validate(rows, source="memory")
    assert len(report.problems) == 25
    with pytest.raises(DatasetError) as err:
        report.raise_if_errors()
    assert str(err.value).count("memory, index") == 20 and "... and 5 more" in str(err.value)
    assert "index 19 (id 'r19'): turn 2 (assistant) has empty content" in str(err.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    good = b'{"id": "a", "messages": [{"role": "user", "content": "Caf\xc3\xa9?"}, '
    good += b'{"role": "assistant", "content": "Yes"}]}\n'
    bad = good.replace(b'"a"', b'"b"').replace(b"\xc3\xa9", b"\xe9")  # é in Latin-1
    for suffix, content in [
        (".jsonl", good + bad),
        (".txt", b"fine\ncaf\xe9\n"),
        (".csv", b"prompt,response\nhi,caf\xe9\n"),
    ]:
        path = tmp_path / f"latin1{suffix}"
        path.write_bytes(content)
        with pytest.raises(
            DatasetError,
            match=r"line 2: not valid UTF-8 \(byte 0xe9 at column \d+\)\. Fix: re-save the file as UTF-8",
        ):
            load_chat(path)
    (problem,) = validate(tmp_path / "latin1.jsonl").problems
    assert problem.where == "line 2"
    column = bad.index(0xE9) + 1
    assert problem.problem == f"not valid UTF-8 (byte 0xe9 at column {column})"


def test_in_memory_rows_are_named_by_index_and_max_length_counts_tokens(tok):
    rows = [chat("Which river?", "Amber", id="x"), chat("Which river?", "Silver " * 40, id="y")]
    report = validate(rows, tokenizer=tok, max_length=30)
    assert [(p.where, p.id) for p in report.problems] == [("index 1", "y")]
    n_tokens = token_lengths([rows[1]], tok)[0]
    assert report.problems[0].problem == f"{n_tokens} tokens, over max_length=30"
    assert validate(rows[:1]).ok and "no problems" in str(validate(rows[:1]))


# ----------------------------------------------------------------------------- loaders


def test_load_jsonl_in_chat_format():
    ds = load_jsonl(FIXTURES / "chat.jsonl")
    assert ds["id"] == ["q1", "q2", "q3"] and ds["task"] == ["short_answer", "yes_no", "list"]
    assert [t["role"] for t in ds[2]["messages"]] == ["user", "assistant", "user", "assistant"]


def test_load_jsonl_maps_prompt_response_fields_and_adds_system_prompt():
    ds = load_jsonl(
        FIXTURES / "qa.jsonl",
        prompt_field="question",
        response_field="answer",
        system_prompt="Be brief.",
    )
    assert ds.column_names == ["id", "task", "messages"]
    assert ds[1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Does Elsdale hold its festival in May?"},
        {"role": "assistant", "content": "Yes"},
    ]
    with pytest.raises(
        DatasetError,
        match=r"line 1 \(id 'p1'\): no 'prompt' field \(fields: id, task, question, answer\)",
    ):
        load_jsonl(FIXTURES / "qa.jsonl", prompt_field="prompt", response_field="answer")


def test_load_csv_handles_quoted_commas_and_line_breaks(tmp_path):
    ds = load_csv(FIXTURES / "qa.csv", prompt_field="question", response_field="answer")
    assert ds["id"] == ["c1", "c2", "c3"]
    assert ds[1]["messages"][1]["content"] == "Wren, heron"
    rewrite = ds[2]["messages"][0]["content"]
    assert rewrite == "Rewrite in atlas style:\nThe Ivy runs past the walls of Ashton."
    # A byte-order mark (Excel) is not part of the header; the record after a two-line one is line 4.
    path = tmp_path / "excel.csv"
    path.write_text('\ufeffprompt,response\n"two\nlines",ok\nthree,fields,here\n', encoding="utf-8")
    report = validate(path)
    assert [(p.where, p.problem) for p in report.problems] == [("line 4", "3 fields, header has 2")]
    (tmp_path / "ok.csv").write_text('\ufeffprompt,response\n"two\nlines",ok\n', encoding="utf-8")
    assert load_csv(tmp_path / "ok.csv")[0]["id"] == "ok.csv:2"  # no id column: the file line


def test_load_chat_history_maps_sharegpt_roles():
    ds = load_chat_history(FIXTURES / "chat_history.json")
    assert ds["id"] == ["chat_history.json:0", "conv-7", "chat_history.json:2"]
    assert ds[0]["messages"] == [
        {"role": "user", "content": "Which animal is on the banner of Halhaven?"},
        {"role": "assistant", "content": "otter"},
    ]
    roles = [t["role"] for t in ds[1]["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_load_text_by_paragraph_and_by_line():
    paragraphs = load_chat(FIXTURES / "notes.txt")["text"]
    assert list(paragraphs) == [
        "Varholt lies in Eastmarch. The river Amber flows through it, and its people make glass.",
        "Belmere is a town in Lowfen. Its emblem is the heron.",
        "Corford exports salt. Its festival falls in March.",
    ]
    assert len(load_text(FIXTURES / "notes.txt", split_by="line")) == 5


def test_from_dataset_maps_columns_and_passes_chat_rows_through():
    ds = Dataset.from_dict({"instruction": ["Name the river of Wynby."], "output": ["Dusk"]})
    mapped = from_dataset(ds, prompt_field="instruction", response_field="output")
    assert mapped.column_names == ["messages"] and mapped[0]["messages"][1]["content"] == "Dusk"
    assert load_chat(mapped).to_list() == mapped.to_list()


# ----------------------------------------------------------------------------- cleaning


def test_clean_removes_exactly_what_each_step_should_and_adds_up():
    rows = [
        chat("Which river flows through Varholt?", "Amber", id="keep-1"),
        chat("  Which river  flows through Varholt?\n", "Amber ", id="ws-dup"),  # = after strip
        chat("which river flows through varholt", "amber.", id="near-dup"),  # = after normalize
        chat("Does Belmere export glass?", "   ", id="empty"),
        chat("Describe Corford. " * 10, "It is a town.", id="too-long"),
        chat("Hi?", "No", id="too-short"),
        chat("Does Dunwick export salt?", "Yes", id="keep-2"),
    ]
    out, report = clean(Dataset.from_list(rows), min_length=10, max_length=100)
    assert out["id"] == ["keep-1", "keep-2"]
    steps = {s.name: s for s in report.steps}
    assert list(steps) == ["whitespace", "exact_duplicates", "near_duplicates", "length"]
    assert steps["whitespace"].removed_ids == ["empty"] and steps["whitespace"].modified == 2
    assert steps["exact_duplicates"].removed_ids == ["ws-dup"]
    assert steps["near_duplicates"].removed_ids == ["near-dup"]
    assert steps["length"].removed_ids == ["too-long", "too-short"]
    for before, after in pairwise(report.steps):
        assert after.rows_in == before.rows_out
    removed = sum(len(s.removed_ids) for s in report.steps)
    assert report.steps[0].rows_in == len(rows) == len(out) + removed
    table = str(report).splitlines()
    assert table[2].split()[:4] == ["exact_duplicates", "6", "1", "5"]
    assert "too-long, too-short (outside 10..100 characters)" in table[4]


def test_normalize_text_is_what_near_duplicates_compare():
    assert normalize_text("  What's the  RIVER of Varholt?!") == "what s the river of varholt"


# ----------------------------------------------------------------------------- splitting


def repeated_prompts(n_per_task: int = 40) -> Dataset:
    """Rows of 5 tasks; one prompt in three is asked twice (rephrased case and punctuation)."""
    rows = []
    for task in ["short_answer", "yes_no", "list", "extract_json", "rewrite"]:
        for i in range(n_per_task):
            rows.append(chat(f"{task} question {i}?", f"answer {i}", id=f"{task}/{i}", task=task))
            if i % 3 == 0:
                again = chat(f"{task.upper()} question {i}", f"other {i}", id=f"{task}/{i}/again")
                rows.append(again | {"task": task})
    return Dataset.from_list(rows)


def test_naive_random_split_leaks_but_ours_does_not():
    ds = repeated_prompts()
    naive = ds.train_test_split(test_size=0.2, seed=0)
    assert check_no_leakage(naive)  # the rephrased duplicates end up on both sides
    ours = split(ds, seed=0)
    assert check_no_leakage(ours) == []
    every_id = [i for part in ours.values() for i in part["id"]]
    assert sorted(every_id) == sorted(ds["id"])  # every row, exactly once


def test_split_is_stratified_by_task_and_deterministic():
    ds = repeated_prompts()
    parts = split(ds, fractions=(0.8, 0.1, 0.1), seed=0)
    totals = Counter(ds["task"])
    for name, fraction in zip(["train", "validation", "test"], (0.8, 0.1, 0.1)):
        counts = Counter(parts[name]["task"])
        for task, total in totals.items():
            assert abs(counts[task] - fraction * total) <= 1, (name, task, counts[task], total)
    assert split(ds, seed=0)["test"]["id"] == parts["test"]["id"]
    assert split(ds, seed=1)["test"]["id"] != parts["test"]["id"]


# ----------------------------------------------------------------------------- tokenization

# Every public name that moved from ftlearn.data to ftlearn.templates: notebooks and learners' code
# import them from ftlearn.data.
MOVED = (
    "GENERATION_MARKER LOSSES OWN_PAD TEMPLATE_CHECKS TemplateError TemplateProblem TemplateReport "
    "TruncationReport check_template show_loss_mask token_lengths tokenize_chat truncation_report "
    "with_generation_markers"
).split()
MOVED_TO_PACKING = "PackingStats PaddingStats packing_stats padding_stats".split()


def test_what_moved_to_templates_is_still_importable_from_data():
    from ftlearn import packing

    missing = [n for n in MOVED if getattr(data, n, None) is not getattr(templates, n)]
    missing += [n for n in MOVED_TO_PACKING if getattr(data, n, None) is not getattr(packing, n)]
    assert not missing, f"re-export {missing} in ftlearn/data.py"


def test_loss_mask_covers_exactly_the_assistant_answers_and_im_end(tok):
    im_end = tok.convert_tokens_to_ids(IM_END)
    for row in load_chat(FIXTURES / "chat.jsonl"):
        enc = tokenize_chat(row, tok)
        expected = []
        for turn in row["messages"]:
            if turn["role"] == "assistant":
                expected += tok(turn["content"], add_special_tokens=False)["input_ids"] + [im_end]
        pairs = zip(enc["input_ids"], enc["assistant_masks"])
        assert [i for i, m in pairs if m] == expected
        assert [x for x in enc["labels"] if x != -100] == expected
        assert len(enc["attention_mask"]) == len(enc["input_ids"]) == token_lengths([row], tok)[0]


def test_show_loss_mask_marks_the_answer_tokens(tok):
    row = chat("Which river flows through Varholt?", "Amber")
    view = show_loss_mask(row, tok).splitlines()
    assert view[0] == "loss  token" and len(view) == 1 + len(tokenize_chat(row, tok)["input_ids"])
    answer = [ast.literal_eval(line[6:]) for line in view[1:] if line.startswith("loss")]
    assert "".join(answer) == "Amber" + IM_END


def test_template_without_generation_markers_fails_clearly(tok, monkeypatch):
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    monkeypatch.setattr(tok, "chat_template", plain)
    with pytest.raises(ValueError, match=r"no \{% generation %\} markers"):
        tokenize_chat(chat("q", "a"), tok)


# SmolLM2-135M-Instruct's template: ChatML without {% generation %} markers, with a default system.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def test_with_generation_markers_keeps_the_rendering_and_marks_the_answer(tok, monkeypatch):
    assert with_generation_markers(tok) is tok  # the course template has the markers already
    monkeypatch.setattr(tok, "chat_template", SMOLLM2_TEMPLATE)
    marked = with_generation_markers(tok)
    assert marked is not tok and tok.chat_template == SMOLLM2_TEMPLATE
    rows = [chat("Which river?", "Amber"), chat("Which river?", "Amber", id="s")]
    rows[1]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    for row in rows:
        text = tok.apply_chat_template(row["messages"], tokenize=False)
        assert marked.apply_chat_template(row["messages"], tokenize=False) == text
        enc = tokenize_chat(row, marked)
        assert tok.decode([i for i in enc["labels"] if i != -100]) == "Amber" + IM_END
    assert "named SmolLM" in marked.apply_chat_template(rows[0]["messages"], tokenize=False)


def test_check_template_checks_a_template_without_markers_through_the_marked_copy(tok, monkeypatch):
    monkeypatch.setattr(tok, "chat_template", SMOLLM2_TEMPLATE)  # tests/test_templates.py: the rest
    report = check_template(tok, [chat("Which river?", "Amber")])
    assert report.ok and report.problems == [] and "with_generation_markers' copy" in report.checked


def test_with_generation_markers_refuses_a_template_it_cannot_mark(tok, monkeypatch):
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    monkeypatch.setattr(tok, "chat_template", plain)
    with pytest.raises(ValueError, match="not plain ChatML"):
        with_generation_markers(tok)


def test_truncation_report_separates_cut_and_lost_answers(tok):
    rows = [chat("Which river flows through Varholt?", "The Amber.", id=f"r{i}") for i in range(3)]
    mask = tokenize_chat(rows[0], tok)["assistant_masks"]
    start, n = mask.index(1), len(mask)
    assert truncation_report(rows, tok, n).truncated_ids == []
    cut = truncation_report(rows, tok, start + 1)
    assert cut.truncated_ids == cut.answer_cut_ids == ["r0", "r1", "r2"]
    assert cut.answer_lost_ids == []
    lost = truncation_report(rows, tok, start)
    assert lost.answer_lost_ids == ["r0", "r1", "r2"] and "3 lose all of it" in str(lost)
    assert len(tokenize_chat(rows[0], tok, max_length=start)["input_ids"]) == start


def test_token_lengths_of_text_rows(tok):
    ds = load_text(FIXTURES / "notes.txt")
    assert token_lengths(ds, tok) == [len(tok(t)["input_ids"]) for t in ds["text"]]


# ----------------------------------------------------------------------------- padding vs packing


def test_padding_stats_exact():
    stats = padding_stats([5, 3, 8, 2], batch_size=2, max_length=10)
    assert (stats.real_tokens, stats.tokens_to_longest, stats.tokens_to_max_length) == (18, 26, 40)
    assert stats.pad_share_longest == pytest.approx(8 / 26)
    assert stats.pad_share_max_length == pytest.approx(22 / 40)
    sorted_stats = padding_stats([5, 3, 8, 2], batch_size=2, max_length=10, sort=True)
    assert sorted_stats.tokens_to_longest == 8 * 2 + 3 * 2  # [8, 5] [3, 2]
    # 12 is cut to 10 first; the last batch holds one row: [10, 4] [6]
    clipped = padding_stats([12, 4, 6], batch_size=2, max_length=10)
    assert (clipped.real_tokens, clipped.tokens_to_longest, clipped.tokens_to_max_length) == (
        20,
        26,
        30,
    )


def test_packing_stats_exact():
    stats = packing_stats([3, 6, 2, 5, 4], block_size=8)  # longest first: [6, 2] [5, 3] [4]
    assert (stats.n_blocks, stats.real_tokens, stats.truncated_tokens) == (3, 20, 0)
    assert stats.waste_share == pytest.approx(4 / 24)
    # Longest first matters: in arrival order the two 4s would share a block and each 6 need its own.
    assert packing_stats([4, 4, 6, 6], block_size=10).n_blocks == 2  # [6, 4] [6, 4]
    long = packing_stats([10, 3], block_size=8)  # 10 is cut to 8
    assert (long.n_blocks, long.real_tokens, long.truncated_tokens) == (2, 11, 2)


def test_packing_stats_match_trl_bfd():
    from trl.data_utils import pack_dataset

    rng = random.Random(0)
    lengths = [rng.randint(1, 120) for _ in range(200)]
    rows = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    packed = pack_dataset(rows, seq_length=100, strategy="bfd")
    stats = packing_stats(lengths, 100)
    assert stats.n_blocks == len(packed)
    assert stats.real_tokens == sum(len(x) for x in packed["input_ids"])
