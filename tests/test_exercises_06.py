"""06_qlora's exercise checks: a right answer passes, and each wrong one fails with its hint."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from ftlearn.estimator import FIT_SETUP, MiB, TrainingSetup, estimate, will_it_fit
from ftlearn.exercises import check


def test_06_1_the_largest_batch_on_a_t4():
    def largest(checkpointing):
        setup = replace(FIT_SETUP, gradient_checkpointing=checkpointing)
        return max(
            b
            for b in range(1, 65)
            if will_it_fit("Llama-3.1-8B", "T4", replace(setup, batch_size=b)).fits
        )

    right = (largest(True), largest(False))
    assert right[0] > right[1]  # the exercise's point: checkpointing buys batch
    check("06.1", right)
    with pytest.raises(AssertionError, match="does not fit"):
        check("06.1", (right[0] + 1, right[1]))
    with pytest.raises(AssertionError, match="still fits"):
        check("06.1", (right[0], right[1] - 1))
    with pytest.raises(AssertionError, match="with checkpointing, largest batch without"):
        check("06.1", right[0])


def test_06_2_qlora_without_checkpointing():
    shape = "SmolLM2-135M"
    setup = TrainingSetup("qlora", dtype="float32", batch_size=16, seq_len=125, optimizer="adamw_8bit",
                          gradient_checkpointing=True, lora_dropout=0.05, loss="trl", device="cpu")  # fmt: skip
    with_ckpt = estimate(shape, setup).total / MiB
    without = estimate(shape, replace(setup, gradient_checkpointing=False)).total / MiB
    check("06.2", without, shape=shape, setup=setup, checkpointed=with_ckpt)
    with pytest.raises(AssertionError, match="turns checkpointing on by default"):
        check("06.2", with_ckpt, shape=shape, setup=setup, checkpointed=with_ckpt)
    with pytest.raises(AssertionError, match="model_bytes"):
        check("06.2", without * 1.5, shape=shape, setup=setup, checkpointed=with_ckpt)
    with pytest.raises(AssertionError, match="in MiB"):
        check("06.2", without * MiB, shape=shape, setup=setup, checkpointed=with_ckpt)


def test_06_3_what_8bit_adamw_keeps():
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the lock; needed here")
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 8, bias=False), torch.nn.Linear(8, 704, bias=False)
    )
    model[0].weight.requires_grad_(True)
    opt = bnb.optim.AdamW8bit(model.parameters())
    with pytest.raises(AssertionError, match="no state yet"):
        check("06.3", 2.0, trainer=SimpleNamespace(optimizer=opt, model=model))
    model(torch.ones(4, 256)).sum().backward()
    opt.step()
    # 2,048 values in 32 bits (8 bytes each), 5,632 in 8 bits (2 each, + absmax and code tables)
    truth = (8 * 2048 + 2 * 5632 + 8 * 22 + 2 * 1024) / (2048 + 5632)
    check("06.3", truth, trainer=SimpleNamespace(optimizer=opt, model=model))
    with pytest.raises(AssertionError, match="textbook"):
        check("06.3", 2.0, trainer=SimpleNamespace(optimizer=opt, model=model))
    with pytest.raises(AssertionError, match="state bytes / trainable"):
        check("06.3", 8.0, trainer=SimpleNamespace(optimizer=opt, model=model))
    with pytest.raises(AssertionError, match="adamw_bnb_8bit"):
        check(
            "06.3",
            truth,
            trainer=SimpleNamespace(optimizer=torch.optim.AdamW(model.parameters()), model=model),
        )
    # as transformers builds optim="adamw_bnb_8bit": bitsandbytes' AdamW with optim_bits=8
    as_transformers = bnb.optim.AdamW(model.parameters(), optim_bits=8)
    model(torch.ones(4, 256)).sum().backward()
    as_transformers.step()
    check("06.3", truth, trainer=SimpleNamespace(optimizer=as_transformers, model=model))
    with pytest.raises(AssertionError, match="32-bit AdamW"):
        check(
            "06.3",
            truth,
            trainer=SimpleNamespace(
                optimizer=bnb.optim.AdamW(model.parameters(), optim_bits=32), model=model
            ),
        )
