"""ftlearn.formats: each format people bring, as rows and as a JSONL file, and what the model trains on."""

from __future__ import annotations

import csv
import json

import pytest
from datasets import Dataset

from ftlearn import profiles
from ftlearn.data import (
    DatasetError,
    from_dataset,
    load_chat,
    load_csv,
    load_jsonl,
    validate,
)
from ftlearn.models import resolve
from ftlearn.templates import tokenize_chat
from ftlearn.tokenizer import IM_END
from ftlearn.training import to_dataset

Q, A, S = "Which river flows through Varholt?", "Amber", "Answer with the fact only."
CONTEXT = "Varholt lies in Eastmarch; the Amber flows through it."


def turn(role: str, content: str, **extra) -> dict:
    return {"role": role, "content": content, **extra}


@pytest.fixture(scope="module")
def tok():
    # The course tokenizer as the tiny profile ships it: tokenizer files only, no weights.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(profiles.get("tiny"), "base"))


def trained_on(row: dict, tok) -> str:
    """The text of the tokens that carry loss (labels != -100)."""
    return tok.decode([t for t in tokenize_chat(row, tok)["labels"] if t != -100])


# format: (raw rows, the messages each becomes)
CASES = {
    "openai_chat": (
        [{"id": "c1", "messages": [turn("system", S), turn("user", Q), turn("assistant", A)]}],
        [[turn("system", S), turn("user", Q), turn("assistant", A)]],
    ),
    "openai_weight": (
        [
            {
                "messages": [
                    turn("user", Q),
                    turn("assistant", "Silver", weight=0),
                    turn("user", "Are you sure?"),
                    turn("assistant", A, weight=1),
                ]
            }
        ],
        [
            [
                turn("user", Q, weight=0),
                turn("assistant", "Silver", weight=0),
                turn("user", "Are you sure?", weight=0),
                turn("assistant", A, weight=1),
            ]
        ],
    ),
    "sharegpt": (
        [
            {
                "id": "s1",
                "conversations": [
                    {"from": "system", "value": S},
                    {"from": "human", "value": Q},
                    {"from": "gpt", "value": A},
                ],
            }
        ],
        [[turn("system", S), turn("user", Q), turn("assistant", A)]],
    ),
    "alpaca": (
        [
            {"instruction": "Name the river of this town.", "input": CONTEXT, "output": A},
            {"instruction": Q, "input": "", "output": A},
            {"instruction": Q, "output": A},  # input is optional
        ],
        [
            [turn("user", f"Name the river of this town.\n\n{CONTEXT}"), turn("assistant", A)],
            [turn("user", Q), turn("assistant", A)],
            [turn("user", Q), turn("assistant", A)],
        ],
    ),
    "trl_prompt_completion": (
        [{"prompt": Q, "completion": A}],
        [[turn("user", Q), turn("assistant", A)]],
    ),
    "trl_conversational": (
        [{"prompt": [turn("system", S), turn("user", Q)], "completion": [turn("assistant", A)]}],
        [[turn("system", S), turn("user", Q), turn("assistant", A)]],
    ),
    "prompt_response": (
        [{"prompt": Q, "response": A, "task": "short_answer"}],
        [[turn("user", Q), turn("assistant", A)]],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_each_format_becomes_these_messages_as_rows_and_as_jsonl(name, tmp_path):
    rows, expected = CASES[name]
    assert load_chat(rows)["messages"] == expected
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_jsonl(path)
    assert ds["messages"] == expected
    ids = [r.get("id", f"{name}.jsonl:{n}") for n, r in enumerate(rows, 1)]
    assert ds["id"] == ids  # rows without an id point back at their line


@pytest.mark.parametrize("name", CASES)
def test_the_report_accounts_for_every_field_of_every_row(name):
    rows, _ = CASES[name]
    report = validate(rows).formats
    assert report.n_rows == len(rows) and "refused" not in report.formats
    for name_ in {f for r in rows for f in r}:
        # Each field of a row is used, joined, empty, kept or dropped: exactly one of them.
        once = sum(report.count(name_, a) for a in ("used", "joined", "empty", "kept", "dropped"))
        assert once == sum(name_ in r for r in rows), (name_, str(report))


def test_alpaca_input_is_joined_and_the_report_says_so(tok):
    rows, _ = CASES["alpaca"]
    report = validate(rows).formats
    assert report.formats == {"alpaca": 3}
    assert (report.count("input", "joined"), report.count("input", "empty")) == (1, 1)
    assert report.count("instruction", "used") == report.count("output", "used") == 3
    table = str(report).splitlines()
    assert table[0] == "3 rows: alpaca 3" and table[1].split() == [
        "field",
        "used",
        "joined",
        "empty",
    ]
    assert table[3].split() == ["input", "-", "1", "1"]  # fields in the row's order
    row = load_chat(rows)[0]
    enc = tokenize_chat(row, tok)
    assert CONTEXT in tok.decode(enc["input_ids"])  # the model sees the context...
    assert trained_on(row, tok) == A + IM_END  # ...and learns the answer only


def test_alpaca_loaded_with_prompt_field_refuses_to_lose_its_input(tmp_path):
    # The case: prompt_field="instruction" would leave `input` behind as a stray column.
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CASES["alpaca"][0]))
    with pytest.raises(DatasetError) as err:
        load_jsonl(path, prompt_field="instruction", response_field="output")
    message = str(err.value)
    assert message.startswith(f"1 problem(s) in {path} (3 rows):")
    assert f"{path}, line 1: input would be left out: the row is alpaca" in message
    assert "load it without prompt_field/response_field" in message
    # The same mapping is fine where nothing is left behind (empty or no input: lines 2 and 3).
    mapped = load_chat(CASES["alpaca"][0][1:], prompt_field="instruction", response_field="output")
    assert mapped["messages"] == CASES["alpaca"][1][1:]
    kept = load_chat(CASES["alpaca"][0], drop_fields=["input"])  # leaving it out on purpose
    assert kept[0]["messages"][0]["content"] == "Name the river of this town."
    assert (
        validate(CASES["alpaca"][0], drop_fields=["input"]).formats.count("input", "dropped") == 2
    )


def test_alpaca_csv_is_recognised_by_its_columns(tmp_path):
    path = tmp_path / "alpaca.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows(
            [[r["instruction"], r.get("input", ""), r["output"]] for r in CASES["alpaca"][0]]
        )
    assert load_csv(path)["messages"] == CASES["alpaca"][1]


def test_alpaca_text_column_is_kept_not_trained_on_and_reported():
    # tatsu-lab/alpaca ships a `text` column: the whole prompt, pre-rendered in its own format.
    rows = [{"instruction": Q, "input": "", "output": A, "text": f"### Instruction:\n{Q}"}]
    ds = load_chat(rows)
    assert ds.column_names == ["text", "messages"] and ds[0]["messages"] == CASES["alpaca"][1][1]
    report = validate(rows).formats
    assert report.count("text", "kept") == 1 and "kept as a column, not in the conversation" in str(
        report
    )


def test_weight_0_answers_carry_no_loss_and_no_turn_gets_none(tok):
    rows = CASES["openai_weight"][0] + [{"messages": [turn("user", Q), turn("assistant", A)]}]
    # What Arrow does with a key on some turns only: every turn gets it, None where it was missing.
    padded = Dataset.from_dict({"messages": [r["messages"] for r in rows]}).to_list()
    assert padded[0]["messages"][0]["weight"] is None
    ds = load_chat(rows)
    for row in ds:
        for t in row["messages"]:
            assert set(t) == {"role", "content", "weight"} and t["weight"] in (0, 1), t
    assert [t["weight"] for t in ds[1]["messages"]] == [0, 1]  # an answer without one: weight 1
    assert trained_on(ds[0], tok) == A + IM_END  # not "Silver": its weight is 0
    unweighted = {
        "messages": [{k: v for k, v in t.items() if k != "weight"} for t in ds[0]["messages"]]
    }
    assert trained_on(unweighted, tok) == "Silver" + IM_END + A + IM_END
    # ftlearn.training trains the last answer; the weight-0 one is context.
    assert to_dataset(ds)[0]["completion"] == [turn("assistant", A, weight=1)]
    assert from_dataset(ds).to_list() == ds.to_list()  # a loaded Dataset loads unchanged


def test_turns_after_the_last_weight_1_answer_are_cut_and_reported(tok):
    rows = [
        {
            "messages": [
                turn("user", Q),
                turn("assistant", A),
                turn("user", "And its export?"),
                turn("assistant", "glass", weight=0),
            ]
        }
    ]
    ds = load_chat(rows)
    assert ds[0]["messages"] == [turn("user", Q), turn("assistant", A)]  # no weight left to keep
    assert validate(rows).formats.count("messages", "cut") == 1
    assert (
        to_dataset(ds)[0]["completion"][0]["content"] == A and trained_on(ds[0], tok) == A + IM_END
    )


def test_to_dataset_refuses_a_row_built_by_hand_that_ends_in_a_weight_0_answer():
    # Without load_chat nothing cuts the weight-0 answer, and it would be the trained completion.
    ok = {"id": "ok", "messages": [turn("user", Q), turn("assistant", A)]}
    hand_made = {"id": "hand-made", "messages": [*ok["messages"], turn("user", "And its export?")]}
    hand_made["messages"].append(turn("assistant", "glass", weight=0))
    refused = r"row 1 \(hand-made\): the last assistant turn has weight 0"
    with pytest.raises(ValueError, match=refused):
        to_dataset([ok, hand_made])
    with pytest.raises(ValueError, match="load it with ftlearn.data.load_chat"):
        to_dataset(Dataset.from_list([hand_made]))  # in a Dataset, the turns without one get None
    assert to_dataset([ok])[0]["completion"] == [turn("assistant", A)]


@pytest.mark.parametrize(
    "turns, problem",
    [
        (
            [turn("user", Q), turn("assistant", A, weight=0.5)],
            "turn 2 has weight 0.5; OpenAI's format allows 0 or 1",
        ),
        (
            [turn("user", Q, weight=1), turn("assistant", A)],
            "turn 1 (user) has weight 1: only assistant turns",
        ),
        ([turn("user", Q), turn("assistant", A, weight=0)], "every assistant turn has weight 0"),
    ],
)
def test_bad_weights_are_refused_with_the_fix(turns, problem):
    with pytest.raises(DatasetError, match=r"index 0: ") as err:
        load_chat([{"messages": turns}])
    assert problem in str(err.value) and "Fix: set weight" in str(err.value)


TOOL_ROWS = {
    "openai tool_calls": {
        "messages": [
            turn("user", "Weather in Varholt?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            turn("assistant", "Rain."),
        ]
    },
    "tools listed": {
        "tools": [{"type": "function"}],
        "messages": [turn("user", Q), turn("assistant", A)],
    },
    "sharegpt function_call": {
        "conversations": [
            {"from": "human", "value": "Weather?"},
            {"from": "function_call", "value": '{"name": "weather"}'},
            {"from": "observation", "value": "rain"},
            {"from": "gpt", "value": "Rain."},
        ]
    },
}


@pytest.mark.parametrize("kind", TOOL_ROWS)
def test_tool_calls_are_refused_saying_so_and_what_to_do(kind):
    report = validate([TOOL_ROWS[kind]])
    (problem,) = report.problems  # one problem for the row, naming every tool turn
    assert "tool-calling turns are not supported" in problem.problem
    assert "supports_tool_calling" in problem.fix and "drop the row" in problem.fix
    if kind == "openai tool_calls":
        assert problem.problem.startswith("turns 2 (tool_calls), 3 (role 'tool'): ")


def test_unknown_turn_fields_are_refused_unless_dropped_on_purpose():
    rows = [{"messages": [turn("user", Q, name="learner"), turn("assistant", A)]}]
    with pytest.raises(
        DatasetError,
        match=r"turn 1 has a field 'name' that ftlearn does not train on\. Fix: leave it out with drop_fields=\['name'\]",
    ):
        load_chat(rows)
    assert load_chat(rows, drop_fields=["name"])["messages"] == [
        [turn("user", Q), turn("assistant", A)]
    ]
    assert validate(rows, drop_fields=["name"]).formats.count("messages[].name", "dropped") == 1


@pytest.mark.parametrize(
    "row, problem",
    [
        (
            {"messages": [turn("user", Q), turn("assistant", A)], "instruction": Q, "output": A},
            "fields of 2 formats: chat (messages); alpaca (instruction, output)",
        ),
        ({"prompt": Q, "completion": A, "response": A}, "fields of 2 formats: prompt_completion"),
        (
            {"instruction": Q, "context": CONTEXT, "response": A},
            "no 'messages' field (fields: id, instruction, context, response); alpaca needs instruction and output, prompt_response needs prompt and response",
        ),
        ({"prompt": [turn("user", Q)], "completion": A}, "prompt is list, completion is str"),
        (
            {
                "prompt": [turn("user", Q)],
                "completion": [turn("assistant", A), turn("user", "More?")],
            },
            "the completion is 2 turn(s) (assistant, user)",
        ),
        (
            {"system": S, "messages": [turn("system", S), turn("user", Q), turn("assistant", A)]},
            "a 'system' field and a system turn",
        ),
    ],
)
def test_ambiguous_rows_are_refused_with_the_row_and_a_fix(row, problem):
    (found,) = validate([{"id": "r", **row}]).problems
    assert found.where == "index 0" and found.id == "r" and problem in found.problem, found
    assert found.fix


def test_a_system_field_becomes_the_system_turn():
    rows = [
        {"system": S, "instruction": Q, "output": A},
        {"system": "", "prompt": Q, "response": A},
    ]
    assert load_chat(rows)["messages"] == [
        [turn("system", S), turn("user", Q), turn("assistant", A)],
        [turn("user", Q), turn("assistant", A)],
    ]
    report = validate(rows).formats
    assert (report.count("system", "used"), report.count("system", "empty")) == (1, 1)


def test_trl_prompt_completion_trains_on_the_completion(tok):
    # What ftlearn.training gives TRL (completion_only_loss): the completion is the answer, and
    # TRL's completion tokens are those after the prompt rendered with add_generation_prompt=True.
    for rows in (CASES["trl_prompt_completion"][0], CASES["trl_conversational"][0]):
        (pair,) = to_dataset(load_chat(rows)).to_list()
        assert pair["completion"] == [turn("assistant", A)] and pair["prompt"][-1] == turn(
            "user", Q
        )
        prompt = tok.apply_chat_template(
            pair["prompt"], add_generation_prompt=True, return_dict=False
        )
        full = tok.apply_chat_template(pair["prompt"] + pair["completion"], return_dict=False)
        assert full[: len(prompt)] == prompt
        assert tok.decode(full[len(prompt) :]) == A + IM_END + "\n"


def test_response_field_alone_is_an_error():
    with pytest.raises(ValueError, match="give both"):
        load_chat(CASES["prompt_response"][0], response_field="answer")
