"""The checks of 02_datasets' exercises."""

from __future__ import annotations

from ftlearn.exercises import close, exercise


@exercise("02.1")
def _loss_tokens_by_hand(answer, example, tokenizer) -> str:
    from ftlearn.templates import tokenize_chat

    truth = sum(tokenize_chat(example, tokenizer)["assistant_masks"])
    chat = tokenizer.apply_chat_template(example["messages"], return_dict=False)
    prompt = tokenizer.apply_chat_template(
        example["messages"][:-1], add_generation_prompt=True, return_dict=False
    )
    assert isinstance(answer, int), "the answer is a number of tokens"
    if answer == len(chat) - len(prompt):
        raise AssertionError(
            "close: the chat minus the prompt also holds the newline after <|im_end|>, which the "
            "template leaves outside {% generation %}: no loss on it"
        )
    assert answer == truth, f"{answer} tokens: count the answer's tokens and its <|im_end|>"
    return f"{truth} tokens carry loss: the answer and its <|im_end|>."


@exercise("02.2")
def _padding_at_batch_8(answer, lengths: list[int], max_length: int) -> str:
    from ftlearn.packing import padding_stats

    assert isinstance(answer, dict) and {"random", "grouped"} <= set(answer), (
        'give {"random": share, "grouped": share}: the padding share of each'
    )
    random_ = padding_stats(lengths, 8, max_length).pad_share_longest
    grouped = padding_stats(lengths, 8, max_length, sort=True).pad_share_longest
    assert close(answer["random"], random_, 0.01), (
        f"random batches of 8 pad {random_:.1%} (padding_stats(...).pad_share_longest), "
        f"not {answer['random']:.1%}"
    )
    assert close(answer["grouped"], grouped, 0.01) or abs(answer["grouped"] - grouped) < 1e-3, (
        f"sorted batches of 8 pad {grouped:.1%} (sort=True), not {answer['grouped']:.1%}"
    )
    return f"Batch 8 pads {random_:.1%} in file order, {grouped:.1%} grouped by length."


@exercise("02.3")
def _stricter_length(answer, dataset, tokenizer, max_length: int) -> str:
    from ftlearn.data import clean

    assert isinstance(answer, int), "the answer is a number of rows"
    _, report = clean(dataset, tokenizer=tokenizer, max_length=max_length)
    step = next(s for s in report.steps if "long" in s.name or "length" in s.name)
    truth = len(step.removed_ids)
    assert answer == truth, (
        f"at max_length={max_length} the length step removes {truth} rows, not {answer}: "
        "read it from the CleaningReport's steps"
    )
    return f"{truth} rows over {max_length} tokens; each is reported by id, none silently lost."
