"""Measuring memory (ftlearn.measure): tensor bytes, not Python objects; a built model's steps."""

from __future__ import annotations

import pytest
import torch

from ftlearn import measure
from ftlearn.estimator import OPTIMIZER_BYTES

# Wider than the fixtures' default, so that the steps' tensors outweigh the allocator's rounding.
SMALL = {"vocab_size": 2048, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
         "num_key_value_heads": 4}  # fmt: skip


def test_measure_peak_sees_tensors_not_python_objects():
    def fn():
        a = torch.ones(2 * 1024**2)  # 8 MiB, kept
        b = torch.ones(1024**2)  # 4 MiB, freed at once
        del b
        junk = [float(i) for i in range(200_000)]  # ~6 MiB of Python floats: not tensor memory
        c = torch.ones(512 * 1024)  # 2 MiB, allocated after b was freed
        return a, c, junk

    assert measure.measure_peak(fn, "cpu") == 12 * 1024**2
    with pytest.raises(ValueError, match="cuda"):
        measure.PeakProbe("mps")


def test_training_peak_of_a_built_model_equals_building_it_inside_the_measurement(
    tiny_config, tiny_llama
):
    model = tiny_llama(**SMALL)
    measured = measure.training_peak(model, batch_size=8, seq_len=128, optimizer="adamw", steps=2)
    # the parameters, plus RoPE's inv_freq buffers (a few hundred bytes)
    n_params = sum(p.numel() for p in model.parameters())
    assert measured["weights"] == pytest.approx(4 * n_params, abs=1024)
    tokens = torch.randint(0, 2048, (8, 128))

    def build_and_train():  # the same two steps, with the model made inside the measurement
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        inside = LlamaForCausalLM(tiny_config(**SMALL))
        opt = torch.optim.AdamW(inside.parameters(), lr=1e-4)
        for _ in range(2):
            inside(input_ids=tokens, labels=tokens).loss.backward()
            opt.step()
            opt.zero_grad()

    assert measured["total"] == pytest.approx(
        measure.measure_peak(build_and_train, "cpu"), rel=0.03
    )
    with pytest.raises(ValueError, match="adamw"):
        measure.make_optimizer("adam", model.parameters())
    with pytest.raises(ValueError, match="trl"):
        measure.training_peak(model, 2, 8, loss="fused")


def test_8bit_optimizer_state_is_a_quarter_of_adamw():
    pytest.importorskip("bitsandbytes", reason="the 8-bit optimizers are bitsandbytes'")
    w = torch.nn.Parameter(torch.randn(256, 256))
    sizes = {}
    for name in ("adamw", "paged_adamw_8bit"):
        opt = measure.make_optimizer(name, [w])
        w.grad = torch.randn_like(w)
        opt.step()
        sizes[name] = sum(
            t.numel() * t.element_size()
            for t in opt.state[w].values()
            if torch.is_tensor(t) and t.numel() > 1
        )
    per_param = OPTIMIZER_BYTES["paged_adamw_8bit"](4)
    # two uint8 moments + fp32 absmax per 256 values, plus two 256-entry fp32 code tables
    assert sizes["paged_adamw_8bit"] == pytest.approx(w.numel() * per_param + 2 * 256 * 4, rel=0.01)
    assert sizes["paged_adamw_8bit"] < sizes["adamw"] / 3


def test_adamw_state_bytes_measures_eight_bytes_a_trainable_parameter(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from ftlearn.shapes import lora_params

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    assert measure.adamw_state_bytes(optimizer) == 0  # AdamW makes its state on the first step
    ids = torch.randint(0, 256, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    trainable = lora_params(model.config, 4, ["q_proj", "v_proj"])
    assert (
        measure.adamw_state_bytes(optimizer) == OPTIMIZER_BYTES["adamw"](4) * trainable == 8 * 1792
    )


def test_step_stats_measures_the_profiled_steps_and_times_the_rest():
    from types import SimpleNamespace

    stats = measure.StepStats(memory_steps=2, device="cpu")
    state = SimpleNamespace(global_step=0)
    stats.on_train_begin(None, state, None)
    kept = []
    for step in range(1, 5):
        stats.on_step_begin(None, state, None)
        kept.append(torch.ones(1024**2))  # 4 MiB per step, kept
        state.global_step = step
        stats.on_step_end(None, state, None)
    stats.on_train_end(None, state, None)
    assert stats.peak == 2 * 4 * 1024**2  # only the first two steps were profiled
    assert len(stats.times) == 4 and stats.step_seconds > 0


def test_changed_counts_what_a_step_moved_and_nothing_else():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    model[0].requires_grad_(False)
    packed = torch.nn.Parameter(torch.arange(6, dtype=torch.uint8), requires_grad=False)
    model.register_parameter("codes", packed)  # stands in for bitsandbytes' packed 4-bit weights
    frozen = measure.snapshot(model, lambda p: not p.requires_grad)
    trained = measure.snapshot(model, lambda p: p.requires_grad)
    assert set(frozen) == {"0.weight", "0.bias", "codes"} and set(trained) == {"1.weight", "1.bias"}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(4, 8)).sum().backward()
    opt.step()
    assert measure.changed(frozen, model) == (0, 8 * 8 + 8 + 6)
    assert measure.changed(trained, model) == (2 * 8 + 2, 2 * 8 + 2)
    with torch.no_grad():
        packed[3] += 1  # one byte of the "4-bit" codes changes: counted
    assert measure.changed(frozen, model) == (1, 78)
    with pytest.raises(KeyError, match="not in the model"):
        measure.changed({"gone.weight": torch.zeros(2)}, model)


def test_optimizer_state_bytes_of_torch_and_8bit_adamw():
    small = torch.nn.Parameter(torch.randn(8, 256))  # 2,048 values: under min_8bit_size
    large = torch.nn.Parameter(torch.randn(704, 8))  # 5,632 values: 8-bit, absmax per 256
    adamw = torch.optim.AdamW([small, large])
    for p in (small, large):
        p.grad = torch.ones_like(p)
    adamw.step()
    # two fp32 moments a value; the step counters are 0-d fp32 tensors (4 bytes each)
    assert measure.optimizer_state_bytes(adamw) == 2 * 4 * (2048 + 5632) + 2 * 4
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is in the lock; needed here")
    opt8 = bnb.optim.AdamW8bit([small, large])
    opt8.step()
    qmaps = sum(
        t.untyped_storage().nbytes() for k, t in opt8.state[large].items() if k.startswith("qmap")
    )
    # small: fp32 moments; large: a byte a moment, an fp32 absmax per 256 values, the code tables
    assert measure.optimizer_state_bytes(opt8) == 2 * 4 * 2048 + 2 * 5632 + 2 * 4 * 22 + qmaps
    assert qmaps == 2 * 256 * 4


def test_peak_probe_is_not_lowered_by_garbage_from_an_earlier_probe():
    # A tensor allocated while an earlier probe ran is reported when it is freed: garbage in a
    # reference cycle collected during a later probe used to count as a negative allocation
    # (this very sequence measured 0 for an 8 MB allocation before PeakProbe.start collected).
    import gc

    from ftlearn.measure import measure_peak

    class Node:
        pass

    def leave_garbage():
        node = Node()
        node.self, node.tensor = node, torch.zeros(4_000_000)  # 16 MB, unreachable after return

    def allocate():
        gc.collect()  # whatever garbage is left is freed inside this probe
        x = torch.zeros(2_000_000)  # 8 MB
        del x

    enabled = gc.isenabled()
    gc.disable()
    try:
        measure_peak(leave_garbage, "cpu")
        peak = measure_peak(allocate, "cpu")
    finally:
        if enabled:
            gc.enable()
    assert peak >= 8_000_000, peak


def test_peak_probe_ignores_the_free_of_a_tensor_an_earlier_probe_allocated():
    # The profiler reports that free with its size; counted, it took this 4 MB peak down to 0.
    from ftlearn.measure import measure_peak

    kept = []
    measure_peak(lambda: kept.append(torch.zeros(2_000_000)), "cpu")  # 8 MB, alive after the probe

    def free_then_allocate():
        kept.clear()
        x = torch.zeros(1_000_000)  # 4 MB
        del x

    assert measure_peak(free_then_allocate, "cpu") == 4_000_000
