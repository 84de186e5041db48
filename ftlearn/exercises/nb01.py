"""The checks of 01_foundation_vs_instruct's exercises."""

from __future__ import annotations

import math

from ftlearn.exercises import close, exercise


@exercise("01.1")
def _perplexity_by_hand(answer, model, tokenizer, text: str) -> str:
    from ftlearn.evaluation import perplexity

    truth = perplexity(model, tokenizer, [text])
    assert isinstance(answer, (int, float)), "the answer is one number: exp(mean loss)"
    if close(answer, math.log(truth), 1e-3):
        raise AssertionError("that is the loss; perplexity is exp(loss)")
    assert close(answer, truth, 1e-3), (
        f"{answer:.3f} is not this sentence's perplexity: shift by one (logits at 0..n-2 predict "
        "tokens 1..n-1), take log_softmax, pick the actual tokens, average, then exp"
    )
    return f"Perplexity {truth:.3f}, as ftlearn.evaluation.perplexity computes it."


@exercise("01.2")
def _emblem_first(answer, model, tokenizer, towns: list[dict], export_reversed: float) -> str:
    from ftlearn.foundation import continuation_probability

    assert isinstance(answer, (int, float)), "the answer is one number: a median probability"
    p = continuation_probability(
        model, tokenizer, [f"The {t['emblem']} appears on the banner of" for t in towns],
        [f" {t['town']}" for t in towns],
    )  # fmt: skip
    median = sorted(p)[len(p) // 2]
    assert close(answer, median, 0.05), (
        f"the median over the towns of P(' T' | 'The <emblem> appears on the banner of') is not "
        f"{answer:.4f}: use continuation_probability with a leading space on the town"
    )
    return (
        f"Median {median:.4f}, against {export_reversed:.4f} for the export reversed: the corpus "
        "writes this sentence emblem first, so this direction was read."
    )


@exercise("01.3")
def _temperature(answer, model, tokenizer, rows) -> str:
    from ftlearn.decoding import decoding_table

    assert isinstance(answer, (int, float)) and answer > 0, "a temperature is a positive number"
    settings = {
        "greedy": dict(do_sample=False),
        "yours": dict(do_sample=True, temperature=answer, top_k=0),
    }
    table = decoding_table(model, tokenizer, rows, settings, n=4)["exact match"]
    assert table["yours"] < table["greedy"] / 2, (
        f"at temperature {answer:g} exact match is {table['yours']:.2f}, not below half of "
        f"greedy's {table['greedy']:.2f}: go higher"
    )
    return (
        f"At temperature {answer:g}: {table['yours']:.2f} against greedy's {table['greedy']:.2f}."
    )


@exercise("01.4")
def _pretraining_rate(answer, fast: list[float], slow: list[float]) -> str:
    assert answer in ("higher", "lower"), (
        'answer "higher" or "lower": the tenth of the rate ends ...'
    )
    truth = "higher" if slow[-1] > fast[-1] else "lower"
    assert answer == truth, (
        f"measured: the run at a tenth of the rate ends at {slow[-1]:.2f}, the other at "
        f"{fast[-1]:.2f}; look at your two curves again"
    )
    return f"Final losses {fast[-1]:.2f} (3e-3) and {slow[-1]:.2f} (3e-4): too small a step learns slowly."
