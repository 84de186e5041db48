"""The SFT wrapper: renamed arguments absorbed, bad rows refused, an interrupted run resumes exactly."""

import pytest
from transformers import TrainingArguments

from ftlearn.compat import make_config
from ftlearn.profiles import get
from ftlearn.training import (
    SFTSettings,
    StopAfter,
    last_checkpoint,
    settings_for,
    sft_config,
    to_dataset,
    train_sft,
)


def test_old_argument_names_are_mapped_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="'evaluation_strategy' is now 'eval_strategy'"):
        args = make_config(
            TrainingArguments, output_dir=str(tmp_path), evaluation_strategy="no", use_cpu=True
        )
    assert args.eval_strategy == "no"


def test_names_renamed_upstream_are_passed_under_the_new_name(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers 5.2x warns on gradient_checkpointing
        args = make_config(
            TrainingArguments, output_dir=str(tmp_path), use_cpu=True, gradient_checkpointing=True
        )
    assert args.gradient_checkpointing is True


def test_unknown_argument_is_an_error_with_suggestions(tmp_path):
    with pytest.raises(TypeError, match="learning_rate"):
        make_config(TrainingArguments, output_dir=str(tmp_path), learning_rat=1e-3)


def test_sft_config_carries_the_settings(tmp_path):
    cfg = sft_config(
        SFTSettings(
            output_dir=str(tmp_path), learning_rate=2e-4, batch_size=4, grad_accum=8, max_length=99
        )
    )
    assert (
        cfg.learning_rate,
        cfg.per_device_train_batch_size,
        cfg.gradient_accumulation_steps,
        cfg.max_length,
    ) == (2e-4, 4, 8, 99)
    assert cfg.completion_only_loss and cfg.report_to in ([], "none", ["none"])
    grouped = sft_config(SFTSettings(output_dir=str(tmp_path), group_by_length=True))
    assert str(grouped.train_sampling_strategy).endswith("group_by_length")
    assert not str(cfg.train_sampling_strategy).endswith("group_by_length")


def test_settings_follow_the_profile(tmp_path):
    s = settings_for(get("tiny"), str(tmp_path), epochs=1.0)
    assert (
        s.learning_rate == get("tiny").learning_rate
        and s.batch_size == get("tiny").batch_size
        and s.epochs == 1.0
    )
    assert not s.bf16 and not s.fp16  # CPU: no mixed precision


def test_rows_become_prompt_completion_pairs():
    ds = to_dataset(
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    )
    assert ds[0]["prompt"] == [{"role": "user", "content": "q"}]
    assert ds[0]["completion"] == [{"role": "assistant", "content": "a"}]


def test_row_without_final_answer_is_refused_by_index_and_id():
    with pytest.raises(ValueError, match=r"row 1 \(x7\)"):
        to_dataset(
            [
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                    ]
                },
                {"id": "x7", "messages": [{"role": "user", "content": "q"}]},
            ]
        )


def _tiny(tok):
    from ftlearn.pretraining import new_tiny_model

    return new_tiny_model(
        tok,
        seed=0,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
    )


def test_interrupted_run_resumes_to_the_same_loss(tmp_path):
    from transformers import AutoTokenizer

    from ftlearn.paths import MODELS_DIR
    from ftlearn.world import load_split

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    rows = load_split("instructions_train")[:96]
    kw = dict(max_steps=6, batch_size=8, save_steps=2, logging_steps=1, learning_rate=1e-3)
    full = train_sft(_tiny(tok), tok, rows, SFTSettings(output_dir=str(tmp_path / "a"), **kw))
    train_sft(
        _tiny(tok),
        tok,
        rows,
        SFTSettings(output_dir=str(tmp_path / "b"), **kw),
        callbacks=[StopAfter(4)],
    )
    assert last_checkpoint(str(tmp_path / "b")).endswith("checkpoint-4")
    resumed = train_sft(
        _tiny(tok), tok, rows, SFTSettings(output_dir=str(tmp_path / "b"), **kw), resume_from="last"
    )
    losses = lambda run: [h["loss"] for h in run["history"] if "loss" in h]  # noqa: E731
    assert losses(resumed)[-1] == pytest.approx(losses(full)[-1], abs=1e-5)
    assert resumed["steps"] == full["steps"] == 6


def test_resume_without_checkpoint_says_why(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        last_checkpoint(str(tmp_path))


def test_printed_settings_name_no_local_paths():
    from ftlearn.paths import REPO_ROOT, RUNS_DIR

    text = str(SFTSettings(output_dir=str(RUNS_DIR / "03_sft" / "main")))
    assert str(REPO_ROOT) not in text and "runs/03_sft/main" in text


def test_a_second_trainer_on_the_same_rows_reuses_trls_preparation(tmp_path):
    from transformers import AutoTokenizer

    from ftlearn import training
    from ftlearn.paths import MODELS_DIR
    from ftlearn.world import load_split

    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    rows = load_split("instructions_train")[:40]
    settings = SFTSettings(output_dir=str(tmp_path / "a"), max_steps=1, batch_size=4)
    training._PREPARED.clear()
    first = training.make_trainer(_tiny(tok), tok, rows, settings)
    calls = []
    real = training.to_dataset
    training.to_dataset = lambda r: calls.append(r) or real(r)
    try:  # equal rows in a new list: TRL's prepared rows are passed, nothing is tokenized again
        again = training.make_trainer(_tiny(tok), tok, list(rows), settings)
    finally:
        training.to_dataset = real
    assert calls == [] and again.train_dataset["input_ids"] == first.train_dataset["input_ids"]
    assert first.train_dataset["labels"][0].count(-100) > 0, "answer-only labels, as TRL builds them"
    shorter = training.make_trainer(_tiny(tok), tok, rows, SFTSettings(output_dir=str(tmp_path / "b"),
                                                                       max_steps=1, batch_size=4, max_length=24))
    assert max(map(len, shorter.train_dataset["input_ids"])) <= 24
    training._PREPARED.clear()
    fresh = training.make_trainer(_tiny(tok), tok, rows, settings)
    assert fresh.train_dataset["input_ids"] == first.train_dataset["input_ids"]
    assert fresh.train_dataset["labels"] == first.train_dataset["labels"]


def test_tracking_on_writes_tensorboard_scalars_that_read_back(tmp_path, monkeypatch):
    # The one test with tracking on (the Makefile sets FTLEARN_TRACKING=none for the rest).
    from transformers import AutoTokenizer

    from ftlearn import tracking
    from ftlearn.paths import MODELS_DIR
    from ftlearn.world import load_split

    monkeypatch.setenv(tracking.TRACKING_ENV, "tensorboard")
    tok = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-base")
    settings = SFTSettings(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=8, logging_steps=1)
    assert sft_config(settings).report_to == ["tensorboard"]
    run = train_sft(_tiny(tok), tok, load_split("instructions_train")[:32], settings)
    scalars = tracking.read_tensorboard(tmp_path)
    logged = [h["loss"] for h in run["history"] if "loss" in h]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(logged, rel=1e-5)
    with pytest.raises(FileNotFoundError, match="FTLEARN_TRACKING=tensorboard"):
        tracking.read_tensorboard(tmp_path / "nothing")
