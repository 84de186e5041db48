"""The checks of 10_deployment's exercises."""

from __future__ import annotations

from pathlib import Path

from ftlearn.exercises import exercise

TENSOR = "blk.0.ffn_down.weight"


@exercise("10.1")
def _bits_per_weight(answer, folder: Path) -> str:
    from gguf import GGUFReader

    truth = {}
    for kind in ("Q4_0", "Q4_1", "Q8_0"):
        tensor = next(t for t in GGUFReader(str(Path(folder) / f"model.{kind.lower()}.gguf")).tensors if t.name == TENSOR)
        truth[kind] = 8 * int(tensor.n_bytes) / int(tensor.n_elements)
    assert isinstance(answer, dict) and set(answer) == set(truth), f"my_bits: a dict with the keys {sorted(truth)}"
    for kind, bits in truth.items():
        got = answer[kind]
        assert isinstance(got, float | int), f"my_bits[{kind!r}]: a number of bits"
        if abs(got - bits / 8) < 1e-6:
            raise AssertionError(f"my_bits[{kind!r}] = {got}: that is bytes per weight; a byte is 8 bits")
        assert abs(got - bits) < 1e-6, (f"my_bits[{kind!r}] = {got}: 8 x n_bytes / n_elements of {TENSOR} in "
                                         f"model.{kind.lower()}.gguf (blocks of 32 weights with their f16 scales)")
    return ("4.5, 5.0 and 8.5 bits: the f16 scale (and Q4_1's f16 minimum) cost 16 bits per block of 32. llama.cpp's "
            "K-quants pack them tighter: Q4_K keeps a 6-bit scale and minimum per 32 weights inside super-blocks of 256, "
            "Q4_1's minimum at Q4_0's 4.5 bits.")


@exercise("10.2")
def _never_stops(answer, complete: list[int]) -> str:
    lengths = answer
    assert isinstance(lengths, list) and len(lengths) == len(complete), (
        f"my_lengths: the {len(complete)} answer lengths, [len(ids) for ids in answers_in_fresh_process(...)]")
    assert all(isinstance(n, int) and 0 < n <= 32 for n in lengths), "each length: the count of new tokens, 1 to 32"
    assert lengths != complete, ("those are the complete folder's lengths: save again with eos_token_id set to "
                                 "<|endoftext|> alone, into another folder, and generate from that one")
    long = sum(n == 32 for n in lengths)
    assert long > sum(n == 32 for n in complete), "with <|im_end|> not a stop token, answers should run to the limit"
    return (f"{long} of {len(lengths)} answers ran to the limit, against {sum(n == 32 for n in complete)} from the complete "
            "folder: the model ends its turn with <|im_end|>, and a runtime that does not stop there carries on, "
            "inventing the next turn.")
