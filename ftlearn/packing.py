"""Padding vs packing (02_datasets, section 7): the tokens each way of cutting batches computes,
and what examples packed into one row see of each other.

`padding_stats` and `packing_stats` count tokens. `packed_losses` measures the other half: each
example's loss when it shares a row with others, against the same example alone. TRL packs with
`pack_dataset` (best-fit decreasing) and its padding-free collator, which restarts the position ids
at each example and passes no attention mask; transformers 5 reads the restarts
(`masking_utils.find_packed_sequence_indices`) and makes the causal mask block-diagonal, in sdpa
and eager attention as well as in FlashAttention's variable-length kernel, but only when the forward
pass has no attention mask and no KV cache (TRL's loss passes `use_cache=False`). With an attention mask
of ones, or with positions that run on, the examples of a row attend to each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class PaddingStats:
    """Tokens spent by padded batches: to the longest in each batch, and to max_length."""

    real_tokens: int
    tokens_to_longest: int
    tokens_to_max_length: int

    @property
    def pad_share_longest(self) -> float:
        return 1 - self.real_tokens / self.tokens_to_longest if self.tokens_to_longest else 0.0

    @property
    def pad_share_max_length(self) -> float:
        total = self.tokens_to_max_length
        return 1 - self.real_tokens / total if total else 0.0


def padding_stats(
    lengths: Iterable[int], batch_size: int, max_length: int, sort: bool = False
) -> PaddingStats:
    """Padding cost of batching `lengths` (cut to max_length) in order, or sorted longest first."""
    lengths = [min(n, max_length) for n in lengths]  # truncation comes before batching
    if sort:  # as group_by_length does: similar lengths share a batch
        lengths.sort(reverse=True)
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    longest = sum(len(b) * max(b) for b in batches)
    return PaddingStats(sum(lengths), longest, len(lengths) * max_length)


@dataclass
class PackingStats:
    """Blocks used when whole examples are packed into rows of block_size tokens."""

    block_size: int
    n_sequences: int
    n_blocks: int
    real_tokens: int
    truncated_tokens: int  # cut from examples longer than one block

    @property
    def waste_share(self) -> float:
        total = self.n_blocks * self.block_size
        return 1 - self.real_tokens / total if total else 0.0


def packing_stats(lengths: Iterable[int], block_size: int) -> PackingStats:
    """Greedy best-fit-decreasing packing, as TRL's packing_strategy="bfd": blocks and waste."""
    lengths = list(lengths)
    kept = sorted((min(n, block_size) for n in lengths if n > 0), reverse=True)
    free: list[int] = []  # room left in each block
    for n in kept:
        fits = [b for b, room in enumerate(free) if room >= n]
        if fits:  # the block it fills most tightly
            free[min(fits, key=free.__getitem__)] -= n
        else:
            free.append(block_size - n)
    return PackingStats(block_size, len(lengths), len(free), sum(kept), sum(lengths) - sum(kept))


# ----------------------------------------------------------------------------- what packed examples see

# How a packed row is fed to the model: (position ids restart at each example?, attention mask).
# None as the mask lets transformers build its block-diagonal mask from the restarts.
PACKINGS = {
    "padding-free (TRL)": (True, None),
    "positions restart, mask of ones": (True, "ones"),
    "concatenated, mask of ones": (False, "ones"),
}


def _answer_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per position, the loss of predicting labels[t + 1] (0 where there is no label)."""
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target.clamp(min=0), reduction="none"
    )
    return torch.where(target == -100, 0.0, nll)


@torch.no_grad()
def packed_losses(model, encoded: Sequence[dict], block_size: int) -> dict:
    """Each example's mean answer loss alone and in rows packed by TRL, under each of PACKINGS.

    `encoded`: rows with input_ids and labels (-100: no loss), e.g. from
    `ftlearn.templates.tokenize_chat`. Returns {"alone": [...], packing: [...]} in the order of
    `encoded`; under "rows" the packed rows' count, and under "first" whether each example opens
    its row (nothing before it to attend to).
    """
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model.eval()
    device = next(model.parameters()).device
    too_long = [i for i, e in enumerate(encoded) if len(e["input_ids"]) > block_size]
    if too_long:
        raise ValueError(
            f"Rows {too_long[:5]} are longer than block_size={block_size}: packing would cut them "
            "(TRL's bfd truncates). Truncate them first (tokenize_chat's max_length) or raise block_size."
        )
    # Each row's index rides along as a constant column, so the packed rows say who sits where.
    rows = Dataset.from_dict({
        "input_ids": [list(e["input_ids"]) for e in encoded],
        "labels": [list(e["labels"]) for e in encoded],
        "row": [[i] * len(e["input_ids"]) for i, e in enumerate(encoded)],
    })
    packed = pack_dataset(rows, seq_length=block_size, strategy="bfd")
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    out: dict = {"rows": len(packed), "first": [False] * len(encoded)}
    for block in packed:
        out["first"][block["row"][0]] = True
    alone = []
    for e in encoded:  # the reference: each example in a row of its own
        ids = torch.tensor([e["input_ids"]], device=device)
        labels = torch.tensor([e["labels"]], device=device)
        losses = _answer_losses(model(ids, use_cache=False).logits, labels)
        alone.append((losses.sum() / (labels[:, 1:] != -100).sum()).item())
    out["alone"] = alone
    for name, (restart, mask) in PACKINGS.items():
        per_row = [0.0] * len(encoded)
        for block in packed:
            batch = collate([{k: block[k] for k in ("input_ids", "labels", "seq_lengths")}])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            # the collator labels each example's first token -100 (it has no context in its
            # example); the alone reference never predicts it either
            labels = batch.pop("labels")
            if mask == "ones":  # a hand-rolled collator: a mask, none of TRL's sequence boundaries
                ids, positions = batch["input_ids"], batch["position_ids"]
                if not restart:
                    positions = torch.arange(ids.shape[1], device=device)[None]
                batch = dict(input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids))
            # TRL's batch as it comes, and use_cache=False as TRL's compute_loss passes it:
            # transformers builds the block-diagonal mask only with no attention mask and no cache
            losses = _answer_losses(model(**batch, use_cache=False).logits, labels)
            who = torch.tensor(block["row"], device=device)[1:]
            counted = labels[:, 1:] != -100
            for i in who.unique().tolist():
                here = (who == i) & counted[0]
                per_row[i] = (losses[0][here].sum() / here.sum()).item()
        out[name] = per_row
    return out


def packing_table(losses: dict):
    """packed_losses as a table: mean answer loss, and how far the examples that follow another
    in their row moved from alone (an example that opens its row has nothing before it)."""
    import numpy as np
    import pandas as pd

    alone = np.array(losses["alone"])
    after = ~np.array(losses["first"])  # the examples packing can change
    table = {"alone": {"mean answer loss": alone.mean(), "mean |change|": 0.0,
                                          "largest |change|": 0.0, "share worse": 0.0}}
    for name in PACKINGS:
        diff = (np.array(losses[name]) - alone)[after]
        table[name] = {"mean answer loss": float(np.mean(losses[name])),
                       "mean |change|": float(np.abs(diff).mean()),
                       "largest |change|": float(np.abs(diff).max()),
                       "share worse": float((diff > 1e-4).mean())}
    return pd.DataFrame(table).T
