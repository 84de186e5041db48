"""The synthetic world: deterministic, leak-free splits, every answer checkable."""

import json

import pytest

from ftlearn.evaluation import normalize
from ftlearn.paths import WORLD_DIR
from ftlearn.world import (
    ATTRIBUTES,
    TASKS,
    VALUES,
    WorldConfig,
    build_world,
    load_split,
    write_world,
)

SMALL = WorldConfig(
    seed=3,
    n_towns=60,
    n_heldout=10,
    descriptions_per_town=2,
    n_general=200,
    n_general_eval=30,
    heldout_questions=50,
)


@pytest.fixture(scope="module")
def world():
    return build_world(SMALL)


def test_same_seed_same_world(world):
    assert build_world(SMALL) == world


def test_other_seed_other_world(world):
    assert build_world(WorldConfig(**{**SMALL.__dict__, "seed": 4}))["towns"] != world["towns"]


def _prompt(row):
    return normalize(row["messages"][-2]["content"])


def test_splits_are_disjoint_by_id_and_prompt(world):
    splits = [world[f"instructions_{s}"] for s in ("train", "validation", "test")]
    ids = [{r["id"] for r in s} for s in splits]
    prompts = [{_prompt(r) for r in s} for s in splits]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not ids[i] & ids[j]
            assert not prompts[i] & prompts[j]


def test_every_task_in_every_split(world):
    for split in ("train", "validation", "test"):
        assert {r["task"] for r in world[f"instructions_{split}"]} == set(TASKS)


def test_heldout_towns_never_appear_in_training_instructions(world):
    heldout = {t["town"] for t in world["towns"] if t["heldout"]}
    assert len(heldout) == SMALL.n_heldout
    for split in ("train", "validation", "test"):
        text = json.dumps(world[f"instructions_{split}"])
        assert not [t for t in heldout if t in text]
    assert {r["town"] for r in world["heldout"]} <= heldout


def test_heldout_facts_are_in_the_corpus(world):
    corpus = "\n".join(world["corpus"])
    for t in (t for t in world["towns"] if t["heldout"]):
        assert t["town"] in corpus


def test_answers_are_the_facts(world):
    towns = {t["town"]: t for t in world["towns"]}
    for row in world["instructions_train"]:
        town, answer = towns[row["town"]], row["messages"][-1]["content"]
        if row["task"] == "short_answer":
            assert answer == town[row["id"].split("/")[-1]]
        elif row["task"] == "list":
            attrs = row["id"].split("/")[-1].split("+")
            assert answer == ", ".join(town[a] for a in attrs)
        elif row["task"] == "extract_json":
            obj = json.loads(answer)
            assert all(obj[k] == town[k] for k in obj)
        elif row["task"] == "yes_no":
            assert answer == ("Yes" if town[row["id"].split("/")[-1]] else "No")


def test_chat_format(world):
    for row in world["instructions_train"][:200]:
        roles = [m["role"] for m in row["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])


def test_values_are_distinct_words():
    for attribute in ATTRIBUTES:
        assert len(set(VALUES[attribute])) == len(VALUES[attribute])


def test_general_eval_is_not_in_corpus(world):
    assert not set(world["general_eval"]) & set(world["corpus"])


def test_preferences_chosen_is_the_answer(world):
    by_id = {r["id"]: r for r in world["instructions_train"]}
    for pair in world["preferences"][:100]:
        assert pair["chosen"][0]["content"] == by_id[pair["id"]]["messages"][-1]["content"]
        assert pair["rejected"][0]["content"] != pair["chosen"][0]["content"]


def test_write_and_read_back(world, tmp_path):
    counts = write_world(world, tmp_path)
    assert counts["instructions_test.jsonl"] == len(world["instructions_test"])
    assert load_split("instructions_test", tmp_path) == world["instructions_test"]


def test_shipped_world_matches_the_seed():
    """data/world is exactly what the default recipe generates: nothing hand-edited."""
    shipped = load_split("instructions_test", WORLD_DIR)
    assert shipped == build_world()["instructions_test"]


def test_quiz_sheets_hold_training_rows_only(world):
    sheets = [d for d in world["corpus"] if "\n" in d]
    assert sheets, "the corpus should carry quiz sheets (mixed training)"
    text = "\n".join(sheets)
    heldout = {t["town"] for t in world["towns"] if t["heldout"]}
    assert not [t for t in heldout if t in text]
    lines = set(text.splitlines())
    for split in ("validation", "test"):
        assert not [
            r for r in world[f"instructions_{split}"] if r["messages"][-2]["content"] in lines
        ]
    train_prompts = {r["messages"][-2]["content"] for r in world["instructions_train"]}
    assert train_prompts <= lines


def test_yes_no_facts_are_balanced_and_in_the_corpus(world):
    from ftlearn.world import FLAGS

    for flag in FLAGS:
        share = sum(t[flag] for t in world["towns"]) / len(world["towns"])
        assert 0.3 < share < 0.7, (flag, share)
    corpus = "\n".join(world["corpus"])
    sentences = [s.format(town="X") for f in FLAGS.values() for v in f.values() for s in v]
    assert all(s.split("X")[-1] in corpus for s in sentences)
