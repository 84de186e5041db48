"""The claims notebooks 03-07 make from single runs, tested with 09's statistics.

Each of those notebooks records the per-question exact-match hits of the runs it compares
(`tracking.record_hits`, into `runs/results.jsonl`). `review` reads them back and puts every claim
through the paired bootstrap and McNemar's exact test on the same questions: is the difference the
notebook reads real, or could the questions drawn explain it? A claim of "no difference" can only be
"no difference shown": the interval says how large a difference could still hide in the noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import stats, tracking

NOTEBOOKS = {"03": "03_sft", "04": "04_lora", "05": "05_quantization", "06": "06_qlora", "07": "07_peft_methods"}
# what a claim says of a - b, as the outcomes that agree with it
SAYS = {">": {"a better"}, "=": {"no difference shown"}, ">=": {"a better", "no difference shown"},
        "<=": {"b better", "no difference shown"}}


@dataclass(frozen=True)
class Claim:
    """One comparison a notebook draws: run a against run b, both scored on the same questions."""

    notebook: str  # "04": the runs are recorded as "04 <name>"
    text: str  # what the notebook says, in its words
    a: str
    b: str
    says: str  # ">": a beats b; "=": no difference; ">=": a no worse than b; "<=": a no better than b


CLAIMS = (
    Claim("03", "SFT teaches the task", "after SFT", "before SFT", ">"),
    Claim("03", "in 16 steps the profile's learning rate learns the task, a tenth of it barely", "lr", "lr/10", ">"),
    Claim("04", "in this budget LoRA does at least as well as full fine-tuning", "LoRA", "full", ">="),
    Claim("04", "rank 1 leaves too little room", "LoRA", "LoRA r=1", ">"),
    Claim("04", "attention only does no better than every linear layer", "attention only", "LoRA", "<="),
    Claim("04", "above the profile's rank exact match does not improve", "LoRA 4r", "LoRA", "<="),
    Claim("04", "alpha = r/2 takes steps too small for the budget", "LoRA", "LoRA alpha=r/2", ">"),
    Claim("05", "fp16 costs nothing measurable", "fp16", "fp32", "="),
    Claim("05", "bf16 costs nothing measurable", "bf16", "fp32", "="),
    Claim("05", "int8 costs nothing measurable", "int8", "fp32", "="),
    Claim("05", "NF4 costs little", "nf4", "fp32", "="),
    Claim("05", "Lloyd-Max levels answer no worse than NF4", "Lloyd-Max", "nf4", ">="),
    Claim("06", "QLoRA answers as well as LoRA", "QLoRA", "LoRA", ">="),
    Claim("07", "LoRA beats (IA)³", "lora", "ia3", ">"),
    Claim("07", "LoRA beats prompt tuning", "lora", "prompt_tuning", ">"),
    Claim("07", "LoRA beats prefix tuning", "lora", "prefix_tuning", ">"),
    Claim("07", "LoRA beats the bottleneck adapter", "lora", "bottleneck", ">"),
    Claim("07", "DoRA beats prompt tuning", "dora", "prompt_tuning", ">"),
)


def verdict(a: Sequence[int], b: Sequence[int], alpha: float = 0.05) -> tuple[stats.Difference, stats.McNemar, str]:
    """a - b with its bootstrap interval, McNemar's test, and what the two say together."""
    diff, test = stats.paired(a, b), stats.mcnemar(a, b)
    if diff.low > 0 and test.p_value < alpha:
        return diff, test, "a better"
    if diff.high < 0 and test.p_value < alpha:
        return diff, test, "b better"
    if (diff.low > 0 or diff.high < 0) != (test.p_value < alpha):
        return diff, test, "the two tests disagree"
    return diff, test, "no difference shown"


def review(profile: str, runs: Sequence[dict] | None = None, claims: Sequence[Claim] = CLAIMS) -> list[dict]:
    """Every claim of 03-07, tested on the runs recorded on `profile` (a missing run says which notebook to run)."""
    runs = tracking.read() if runs is None else runs
    out = []
    for claim in claims:
        row = {"notebook": NOTEBOOKS[claim.notebook], "claim": claim.text, "says": claim.says}
        a, b = (tracking.latest(f"{claim.notebook} {name}", profile, runs) for name in (claim.a, claim.b))
        if a is None or b is None:
            out.append(row | {"data say": f"not recorded: run {NOTEBOOKS[claim.notebook]} on {profile} first", "agrees": None})
            continue
        if a["data"]["sha256"] != b["data"]["sha256"]:
            raise ValueError(
                f"{NOTEBOOKS[claim.notebook]}: runs {claim.a!r} and {claim.b!r} were scored on different questions "
                f"(data {a['data']['sha256']} vs {b['data']['sha256']}); rerun the notebook top to bottom."
            )
        diff, test, said = verdict(a["metrics"]["hits"], b["metrics"]["hits"])
        row |= {"a - b": round(diff.diff, 3), "95% interval": f"{diff.low:+.3f} to {diff.high:+.3f}",
                "McNemar p": float(f"{test.p_value:.2g}"), "questions": diff.n, "data say": said,
                "agrees": said in SAYS[claim.says]}
        if said == "no difference shown":  # what the noise could still hide
            hidden = max(abs(diff.low), abs(diff.high))
            row["data say"] += f" (up to {hidden:.0%} either way)" if hidden else " (no question answered otherwise)"
        out.append(row)
    return out
