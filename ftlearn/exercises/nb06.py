"""The checks of 06_qlora's exercises."""

from __future__ import annotations

from dataclasses import replace

from ftlearn.exercises import close, exercise


def _largest_batch(model: str, gpu: str, setup) -> int:
    """The largest batch (up to 256) at which `setup` fits on `gpu`; 0 when batch 1 does not."""
    from ftlearn.estimator import will_it_fit

    fits = [b for b in range(1, 257) if will_it_fit(model, gpu, replace(setup, batch_size=b)).fits]
    return max(fits, default=0)


@exercise("06.1")
def _largest_batch_on_a_t4(answer, model: str = "Llama-3.1-8B", gpu: str = "T4") -> str:
    from ftlearn.estimator import FIT_SETUP, will_it_fit

    assert isinstance(answer, tuple) and len(answer) == 2, (
        "give (largest batch with checkpointing, largest batch without)"
    )
    truth = {}
    for given, checkpointing in zip(answer, (True, False)):
        setup = replace(FIT_SETUP, gradient_checkpointing=checkpointing)
        best = truth[checkpointing] = _largest_batch(model, gpu, setup)
        label = "with" if checkpointing else "without"
        assert isinstance(given, int) and given >= 0, f"a batch size {label} checkpointing: an int"
        if given > best:
            fit = will_it_fit(model, gpu, replace(setup, batch_size=given))
            raise AssertionError(f"batch {given} {label} checkpointing does not fit: {fit}")
        assert given == best, (
            f"batch {given + 1} {label} checkpointing still fits: keep raising batch_size in "
            "replace(FIT_SETUP, ...) until will_it_fit says it does not"
        )
    return (
        f"{truth[True]} sequences of {FIT_SETUP.seq_len} tokens with checkpointing, {truth[False]} "
        f"without: once the weights are in 4 bits, the activations decide the batch."
    )


@exercise("06.2")
def _qlora_without_checkpointing(answer, shape, setup, checkpointed: float) -> str:
    from ftlearn.estimator import MiB, estimate

    assert isinstance(answer, (int, float)), "the answer is one number: the peak in MiB"
    assert not close(answer, checkpointed, 0.03), (
        f"{answer:.0f} MiB is the checkpointed run's peak: prepare_model_for_kbit_training turns "
        "checkpointing on by default; pass use_gradient_checkpointing=False, and "
        "gradient_checkpointing=False to the settings"
    )
    predicted = estimate(shape, replace(setup, gradient_checkpointing=False)).total / MiB
    # Section 2 and 3's estimates land within 0.95-1.05 of the measured peaks: ±20% leaves room.
    assert 0.8 <= answer / predicted <= 1.2, (
        f"{answer:.0f} MiB is not near the {predicted:.0f} MiB the estimator expects for QLoRA "
        "without checkpointing at this batch: the peak is model_bytes(model) + StepStats.peak "
        "(over the first 3 steps of the same batches: group_by_length, longest first), in MiB"
    )
    return (
        f"{answer:.0f} MiB without checkpointing against {checkpointed:.0f} MiB with it (the "
        f"estimator: {predicted:.0f}): at this scale the saved activations are most of the step."
    )


@exercise("06.3")
def _adamw_8bit_state(answer, trainer) -> str:
    from ftlearn.measure import optimizer_state_bytes

    optimizer, model = trainer.optimizer, trainer.model  # the Trainer's (accelerate wraps it)
    assert optimizer is not None, "train first: the Trainer makes its optimizer in train()"
    inner = getattr(optimizer, "optimizer", optimizer)
    # bitsandbytes' optimizers keep their bits in `args` (transformers builds AdamW(optim_bits=8))
    bits = getattr(getattr(inner, "args", None), "optim_bits", 32)
    assert bits == 8, (
        f"this is a {bits}-bit {type(inner).__name__}: measure the run with optim='adamw_bnb_8bit'"
    )
    assert isinstance(answer, (int, float)), "the answer is one number: bytes a trainable parameter"
    trained = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in trained)
    truth = optimizer_state_bytes(optimizer) / n
    assert truth > 0, "the optimizer has no state yet: train at least one step first"
    if abs(answer - 2) < 0.1 and not close(answer, truth, 0.02):
        raise AssertionError(
            "2 bytes (two 8-bit moments) is the textbook figure, not the measurement: sum the "
            "bytes of every tensor in optimizer.state (ftlearn.measure.optimizer_state_bytes)"
        )
    assert close(answer, truth, 0.02), (
        f"{answer:.2f} is not what this optimizer keeps: state bytes / trainable parameters"
    )
    small = sum(p.numel() for p in trained if p.numel() < 4096) / n
    return (
        f"{truth:.2f} bytes a parameter: bitsandbytes keeps tensors under 4,096 values "
        f"(min_8bit_size) in 32 bits, and {small:.0%} of these adapters' values are in such "
        "tensors; a 7B model's adapters (r x 4,096 values and more) are all 8-bit."
    )
