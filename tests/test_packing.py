"""ftlearn.packing: packed rows as TRL feeds them keep examples apart; fed otherwise, they do not."""

import random

import pytest

from ftlearn.packing import PACKINGS, packed_losses, packing_table

PADDING_FREE, RESTART_ONES, CONCATENATED = PACKINGS


def _encoded(n: int, seed: int = 0) -> list[dict]:
    # Random rows of 6-20 tokens; the second half of each is the "answer" (labelled).
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(1, 256) for _ in range(rng.randint(6, 20))]
        half = len(ids) // 2
        rows.append({"input_ids": ids, "labels": [-100] * half + ids[half:]})
    return rows


@pytest.fixture(scope="module")
def losses(tiny_llama):
    return packed_losses(tiny_llama(seed=0), _encoded(24), block_size=48)


def test_padding_free_packing_gives_every_example_its_loss_alone(losses):
    assert losses["rows"] < 24, "rows of 6-20 tokens in blocks of 48 must share rows"
    assert losses[PADDING_FREE] == pytest.approx(losses["alone"], abs=1e-4)


def test_a_mask_of_ones_lets_packed_examples_see_each_other(losses):
    # A random model's output depends on its context: every example that follows another moves.
    followers = [i for i, first in enumerate(losses["first"]) if not first]
    assert followers and sum(losses["first"]) == losses["rows"], "one example opens each row"
    for name in (RESTART_ONES, CONCATENATED):
        moved = [abs(losses[name][i] - losses["alone"][i]) > 1e-3 for i in followers]
        assert all(moved), name
        opened = [i for i, first in enumerate(losses["first"]) if first]
        assert [losses[name][i] for i in opened] == pytest.approx([losses["alone"][i] for i in opened], abs=1e-4)


def test_packing_table_reports_only_followers(losses):
    table = packing_table(losses)
    assert table.loc[PADDING_FREE, "largest |change|"] < 1e-4
    assert table.loc[CONCATENATED, "share worse"] > 0 and table.loc[CONCATENATED, "mean |change|"] > 1e-3
    assert list(table.index) == ["alone", *PACKINGS]


def test_rows_longer_than_a_block_are_refused(tiny_llama):
    with pytest.raises(ValueError, match=r"Rows \[0\] are longer than block_size=10"):
        packed_losses(tiny_llama(seed=0), [{"input_ids": list(range(1, 13)), "labels": list(range(1, 13))}], block_size=10)


def test_transformers_builds_the_block_diagonal_mask_only_without_a_cache(tiny_llama):
    # What packed_losses relies on (and TRL's loss, which passes use_cache=False).
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = tiny_llama(seed=0)
    a, b = [5, 6, 7, 8], [9, 10, 11]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": a}, {"input_ids": b}])
    batch.pop("labels")
    with torch.no_grad():
        alone = model(torch.tensor([b]), use_cache=False).logits[0]
        apart = model(**batch, use_cache=False).logits[0, len(a):]
        cached = model(**batch, use_cache=True).logits[0, len(a):]
    assert torch.allclose(apart, alone, atol=1e-5)
    assert not torch.allclose(cached, alone, atol=1e-3), "with a cache the examples see each other"
