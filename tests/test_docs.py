"""The instructor's guide: linked from the README, every placeholder filled, its tiny column the
one 00_setup shows (ftlearn.profiles.NOTEBOOK_COSTS)."""

import re

from ftlearn.paths import REPO_ROOT
from ftlearn.profiles import NOTEBOOK_COSTS

GUIDE = REPO_ROOT / "docs" / "INSTRUCTORS.md"


def test_the_readme_links_the_guide():
    assert "docs/INSTRUCTORS.md" in (REPO_ROOT / "README.md").read_text()


def test_no_placeholder_is_left():
    text = GUIDE.read_text()
    assert not re.findall(r"\b[A-Z]+_(?:MEASURED|OUTPUT|TABLE|TIMES)\b", text)


def test_the_tiny_column_is_the_cost_table_of_00_setup():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\d\d[a-z]?_\w+)` \| ([^|]+) \|", GUIDE.read_text(), re.M)}
    assert set(rows) == set(NOTEBOOK_COSTS), "one row per notebook"
    for name, cell in rows.items():
        minutes, gib = NOTEBOOK_COSTS[name]["tiny"]
        assert cell.strip() == f"{minutes:g} min / {gib:g} GiB", name
