"""`ftlearn build-tiny --quick` runs the whole recipe (world, tokenizer, both models, metrics)."""

import json

from ftlearn.cli import main


def test_quick_build_writes_world_models_and_metrics(tmp_path):
    assert main(["build-tiny", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("tiny-base", "tiny-instruct"):
        folder = tmp_path / "models" / name
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    metrics = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert set(metrics) >= {"tiny-base", "tiny-instruct", "recipe"}
    assert (tmp_path / "world" / "instructions_train.jsonl").exists()


def test_world_only(tmp_path):
    assert main(["build-tiny", "--world-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "world" / "corpus.txt").stat().st_size > 100_000
