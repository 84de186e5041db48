"""Notebook hygiene: committed executed, in order, without widget state, metadata or machine paths."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_hygiene(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "not committed after Restart & Run All"
    assert "widgets" not in nb["metadata"], "widget state saved: strip it"
    assert all(not c.get("metadata") or set(c["metadata"]) <= {"tags"} for c in nb["cells"]), (
        "cell metadata"
    )
    text = json.dumps(nb)
    assert not re.search(r"/(work|root|home|tmp|Users)/[A-Za-z]", text), "absolute machine path"
    assert all(len("".join(c["source"]).splitlines()) <= 30 for c in code), (
        "code cell over 30 lines"
    )
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, "committed with an error output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_sets_up_a_profile(path):
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "setup(" in "".join(first["source"])
