"""Exercises: every notebook 01-07 has 2-4 with a check each, a solution, and checks that can fail."""

import json
import re
from pathlib import Path

import pytest

from ftlearn.exercises import CHECKS, NotAttempted, check

ROOT = Path(__file__).parent.parent
WRITTEN = sorted({key.split(".")[0] for key in CHECKS})  # the notebooks whose exercises exist
CHECK_CALL = re.compile(r'check\("(\d\d[a-z]?\.\d)"')


def _code(path: Path) -> str:
    return "\n".join(
        "".join(c["source"])
        for c in json.loads(path.read_text())["cells"]
        if c["cell_type"] == "code"
    )


def _notebook(number: str, folder: Path) -> Path:
    (path,) = folder.glob(f"{number}_*.ipynb")
    return path


@pytest.mark.parametrize("number", WRITTEN)
def test_notebook_ends_with_checked_exercises_and_has_solutions(number):
    nb = _notebook(number, ROOT / "notebooks")
    keys = CHECK_CALL.findall(_code(nb))
    assert 2 <= len(keys) <= 4 and keys == sorted(keys), keys
    assert set(keys) == {k for k in CHECKS if k.startswith(number + ".")}
    solution = _notebook(number, ROOT / "notebooks" / "solutions")
    assert CHECK_CALL.findall(_code(solution)) == keys, "the solutions run every check, in order"
    # unattempted in the notebook: every answer the checks read is still the placeholder
    assert _code(nb).count("= ...") >= len(keys)


@pytest.mark.parametrize("key", sorted(CHECKS))
def test_an_unattempted_exercise_fails_its_check(key):
    with pytest.raises(NotAttempted, match=key):
        check(key, ...)


def test_unknown_exercise():
    with pytest.raises(KeyError, match="01.1"):
        check("99.9", 1)


def test_wrong_answers_fail_with_a_hint():
    from ftlearn import profiles
    from ftlearn.evaluation import perplexity
    from ftlearn.models import load

    model, tok = load(profiles.get("tiny"), "base")
    text = "Ashstead is a town in Lowfen."
    truth = perplexity(model, tok, [text])
    check("01.1", truth, model=model, tokenizer=tok, text=text)
    with pytest.raises(AssertionError, match="exp"):
        check("01.1", __import__("math").log(truth), model=model, tokenizer=tok, text=text)
    with pytest.raises(AssertionError, match="shift"):
        check("01.1", truth * 1.1, model=model, tokenizer=tok, text=text)
    with pytest.raises(AssertionError, match="a tenth of the rate ends at 6.50"):
        check("01.4", "lower", fast=[7.0, 3.0], slow=[7.0, 6.5])


def test_the_03_checks_follow_the_measured_numbers():
    # 03.2: does half the steps forget more or less? The truth is read from the two perplexities.
    check("03.2", "less", short=2.22, long=2.62)
    with pytest.raises(AssertionError, match="2.220 after the short run, 2.620 after the full one"):
        check("03.2", "more", short=2.22, long=2.62)
    check("03.2", "more", short=2.7, long=2.62)  # were it measured so, "more" would be right
    # 03.3: the broken model's own stop rate, far below the reference's
    check("03.3", 0.0, broken=0.0, reference=1.0)
    with pytest.raises(AssertionError, match="give the stop rate you measured"):
        check("03.3", 0.5, broken=0.0, reference=1.0)
    with pytest.raises(AssertionError, match="train it on the broken template"):
        check("03.3", 0.8, broken=0.8, reference=1.0)
