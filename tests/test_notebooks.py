"""Notebook hygiene: committed executed, in order, without widget state, metadata or machine paths."""

import json
import re
from pathlib import Path

import pytest

from ftlearn.paths import REPO_URL

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (ROOT / "notebooks" / "solutions").glob("*.ipynb")
)
# A code cell that draws: pyplot calls, a plotting helper of ftlearn, the live loss plot.
DRAWS = re.compile(
    r"plt\.(show|subplots|figure|plot|hist|bar|scatter)\(|\.(plot|hist|bar|scatter|imshow)\("
    r"|\bplot_\w+\(|LiveLossPlot\("
)
WIDGET = "application/vnd.jupyter.widget-view+json"


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
    errors = [
        (c, o) for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    # The one error a committed notebook may show: an exercise's check, not yet attempted.
    unexpected = [
        o["ename"]
        for c, o in errors
        if o["ename"] != "NotAttempted" or "raises-exception" not in c["metadata"].get("tags", [])
    ]
    assert not unexpected, f"committed with an error output: {unexpected}"
    if "solutions" in path.parts:
        assert not errors, "a solution must pass its checks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_sets_up_a_profile(path):
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "setup(" in "".join(first["source"])


def _outputs(cell: dict) -> tuple[set[str], str]:
    """The MIME types a code cell's outputs hold, and the text of those outputs that hold no image.

    Inline figures come as image/png with "<Figure size ...>" as their text/plain: that text
    alone, without the image, is what a non-inline backend leaves.
    """
    kinds, text = set(), []
    for o in cell.get("outputs", []):
        data = o.get("data", {})
        kinds |= set(data)
        if "image/png" not in data:
            text.append("".join(o.get("text", "")) + "".join(data.get("text/plain", "")))
    return kinds, "".join(text)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_is_saved_as_an_image(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    blind = []
    for number, cell in enumerate(cells, 1):
        kinds, text = _outputs(cell)
        if "<Figure size" in text or (
            DRAWS.search("".join(cell["source"])) and "image/png" not in kinds
        ):
            blind.append(number)
    assert not blind, (
        f"code cells {blind} (counting code cells from 1) draw a figure but saved no image: "
        "execute with the inline backend (ftlearn.profiles.setup() selects it)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_widget_has_a_static_rendering(path):
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    bare = [
        n
        for n, c in enumerate(cells, 1)
        if WIDGET in _outputs(c)[0] and not _outputs(c)[0] & {"image/png", "text/html"}
    ]
    assert not bare, f"code cells {bare} show a widget with no table or figure beside it"


def test_the_hygiene_checks_can_fail():
    figure = {
        "cell_type": "code",
        "source": ["plt.plot([1, 2])"],
        "outputs": [
            {
                "output_type": "display_data",
                "data": {"text/plain": "<Figure size 600x300 with 1 Axes>"},
            }
        ],
    }
    kinds, text = _outputs(figure)
    assert "<Figure size" in text and "image/png" not in kinds and DRAWS.search(figure["source"][0])


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_colab_cell_clones_the_course_url(path):
    first = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    clones = re.findall(r"git clone -q (\S+)", "".join(first["source"]))
    assert clones == [REPO_URL], (
        f"the Colab cell clones {clones}, ftlearn.paths.REPO_URL is {REPO_URL}"
    )


def test_readme_names_the_course_url():
    urls = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", (ROOT / "README.md").read_text()))
    assert urls == {REPO_URL}, f"README names {urls}; ftlearn.paths.REPO_URL is {REPO_URL}"
