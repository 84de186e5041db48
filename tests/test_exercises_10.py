"""10_deployment's exercise checks: a right answer passes, each wrong one fails with its hint."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlearn import gguf_export
from ftlearn.exercises import NotAttempted, check
from ftlearn.paths import MODELS_DIR


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    model = AutoModelForCausalLM.from_pretrained(MODELS_DIR / "tiny-instruct")
    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-instruct")
    for kind in ("Q4_0", "Q4_1", "Q8_0"):
        gguf_export.write_gguf(model, tok, out / f"model.{kind.lower()}.gguf", kind)
    return out


def test_bits_per_weight(folder):
    check("10.1", {"Q4_0": 4.5, "Q4_1": 5.0, "Q8_0": 8.5}, folder=folder)
    with pytest.raises(AssertionError, match="bytes per weight"):
        check("10.1", {"Q4_0": 4.5 / 8, "Q4_1": 5.0, "Q8_0": 8.5}, folder=folder)
    with pytest.raises(AssertionError, match="n_bytes / n_elements"):
        check("10.1", {"Q4_0": 4.0, "Q4_1": 4.0, "Q8_0": 8.0}, folder=folder)  # the codes alone, scales forgotten
    with pytest.raises(AssertionError, match="a dict with the keys"):
        check("10.1", {"Q4_0": 4.5}, folder=folder)
    with pytest.raises(NotAttempted):
        check("10.1", ..., folder=folder)


def test_never_stops():
    complete = [2, 15, 2, 19, 2, 2, 2, 24]
    check("10.2", [32] * 8, complete=complete)
    with pytest.raises(AssertionError, match="complete folder's lengths"):
        check("10.2", complete, complete=complete)
    with pytest.raises(AssertionError, match="run to the limit"):
        check("10.2", [3, 15, 2, 19, 2, 2, 2, 24], complete=complete)
    with pytest.raises(AssertionError, match="the 8 answer lengths"):
        check("10.2", [32] * 7, complete=complete)
    with pytest.raises(NotAttempted):
        check("10.2", ..., complete=complete)
