"""Preference tuning (08_preference_tuning): pairs checked, and the losses TRL computes, by hand.

`validate_pairs` checks prompt / chosen / rejected rows as `ftlearn.data.validate` checks chat
rows: every bad row named, with its fix. The losses are written out so that a learner can read
them, and each is tested equal to TRL's on the same batch (tests/test_preference.py):
`bradley_terry_loss` is `RewardTrainer`'s, `dpo_loss` is `DPOTrainer`'s default (sigmoid) loss
from sequence log-probabilities (`sequence_logps`), and `group_advantages` is `GRPOTrainer`'s
group-relative advantage.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ftlearn.data import FIX as CHAT_FIX
from ftlearn.data import Problem, ValidationReport, _turn_problems

SIDES = ("prompt", "chosen", "rejected")
FIX = {
    "missing": "give every row a prompt, a chosen and a rejected answer, or drop the row",
    "format": "use one format per row: all three as text, or the prompt as chat turns and each "
    "answer as one assistant turn ([{'role': 'assistant', 'content': ...}])",
    "answer": "make chosen and rejected each one assistant turn with non-empty content",
    "prompt_end": "end the prompt with the user's turn: the answers are the assistant's reply to it",
    "same": "a pair must differ: fix the rejected answer, or drop the row (it teaches nothing)",
    "id": CHAT_FIX["id"],
}


def _answer_text(answer: Any) -> str | None:
    """The text of one answer (a string, or one assistant turn); None if it is neither."""
    if isinstance(answer, str):
        return answer if answer.strip() else None
    if isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], dict):
        turn = answer[0]
        content = turn.get("content")
        if turn.get("role") == "assistant" and isinstance(content, str) and content.strip():
            return content
    return None


def _pair_problems(row: Any) -> list[tuple[str, str]]:
    """Problems of one preference row, as (problem, fix) pairs."""
    if not isinstance(row, dict):
        return [(f"row is {type(row).__name__}, not an object", FIX["missing"])]
    missing = [k for k in SIDES if row.get(k) in (None, "", [])]
    if missing:
        return [(f"no {' or '.join(missing)}", FIX["missing"])]
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not all(isinstance(row[k], str) for k in ("chosen", "rejected")):
            return [("the prompt is text but an answer is not", FIX["format"])]
    elif isinstance(prompt, list):
        turns = [(f"prompt: {p}", f) for p, f in _turn_problems([*prompt, {"role": "assistant", "content": "-"}])]
        if turns:
            return turns
        if prompt[-1].get("role") != "user":
            return [(f"the prompt ends with a {prompt[-1].get('role')} turn", FIX["prompt_end"])]
        text = [side for side in ("chosen", "rejected") if isinstance(row[side], str)]
        if text:
            return [(f"the prompt is chat turns but {' and '.join(text)} is text", FIX["format"])]
    else:
        return [(f"prompt is {type(prompt).__name__}, not text or a list of turns", FIX["format"])]
    found = [(f"{side} is not one assistant turn with text", FIX["answer"])
             for side in ("chosen", "rejected") if _answer_text(row[side]) is None]  # fmt: skip
    if not found and _answer_text(row["chosen"]).strip() == _answer_text(row["rejected"]).strip():
        found.append(("chosen and rejected are the same answer", FIX["same"]))
    return found


def validate_pairs(rows: list[dict], source: str = "preference pairs") -> ValidationReport:
    """Every problem of prompt / chosen / rejected rows (index 0 is the first row), not only the first."""
    problems, first_seen = [], {}
    for i, row in enumerate(rows):
        where, rid = f"index {i}", row.get("id") if isinstance(row, dict) else None
        found = _pair_problems(row)
        if rid is not None and rid in first_seen:
            found.insert(0, (f"duplicate id, first used at {first_seen[rid]}", FIX["id"]))
        first_seen.setdefault(rid, where)
        problems += [Problem(source, where, problem, fix, rid) for problem, fix in found]
    return ValidationReport(source, len(rows), problems)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected [- margin]), averaged over pairs: a reward model's loss."""
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference).mean()


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over each row's labelled tokens (labels -100 are skipped; shifted by one)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    scored = labels != -100
    logps = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * scored).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's loss from sequence log-probabilities, and its implicit rewards (chosen, rejected).

    The implicit reward of an answer is beta * log(pi(answer) / pi_ref(answer)); the loss is the
    Bradley-Terry loss of those rewards, so the policy itself is the reward model.
    """
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    return bradley_terry_loss(chosen, rejected), chosen.detach(), rejected.detach()


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO's advantage: each completion's reward minus its group's mean, over the group's std.

    `rewards` holds `group_size` completions of one prompt after another. `scale`: "group" (the
    std of each group), "batch" (of all rewards) or "none" (mean removed only), as TRL's
    `scale_rewards`. The std is Bessel-corrected, and 1e-4 keeps a group of equal rewards at 0.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale={scale!r}: use 'group', 'batch' or 'none' (TRL's scale_rewards)")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    advantages = rewards - grouped.mean(dim=1).repeat_interleave(group_size)
    if scale == "none":
        return advantages
    std = grouped.std(dim=1).repeat_interleave(group_size) if scale == "group" else rewards.std().expand_as(rewards)
    return advantages / (std + 1e-4)


def trainer_config(profile, config_class, output_dir: str, method: str = "full", **overrides):
    """A TRL preference config (RewardConfig, DPOConfig, GRPOConfig...) with the profile's precision.

    TRL 1.x defaults `bf16=True` and `gradient_checkpointing=True` in these configs. On a CPU that
    is 20x slower for the tiny model (a RewardTrainer step of 16 pairs: 24 s against ~1.2 s,
    measured 2026-12-02), so both come from `ftlearn.precision` and the run's sizes instead.
    """
    from ftlearn.compat import make_config
    from ftlearn.precision import policy

    values = dict(output_dir=output_dir, gradient_checkpointing=False, report_to="none",
                  use_cpu=profile.device != "cuda", disable_tqdm=True, save_strategy="no",
                  **policy(profile, method).flags())  # fmt: skip
    return make_config(config_class, **(values | overrides))


def heldout_pairs(rows: list[dict], seed: int = 1) -> list[dict]:
    """Preference pairs for instruction rows outside the training pairs (the test split), built
    the way `ftlearn.world` builds the shipped ones: the right answer against a wrong fact or a
    hedging one."""
    import random

    from ftlearn.world import Town, load_split, preference_pair

    towns = {t["town"]: Town(**{k: v for k, v in t.items() if k != "heldout"}) for t in load_split("towns")}
    rng = random.Random(seed)
    return [preference_pair(r, towns, rng) for r in rows]


def sampled_errors(model, tokenizer, rows: list[dict], n: int = 4, max_new_tokens: int = 28,
                   temperature: float = 1.0, seed: int = 0) -> dict:  # fmt: skip
    """`n` sampled answers to each chat row, scored by exact match: the behaviour 08 measures.

    Returns the answers, a 0/1 hit per answer (for `ftlearn.stats`) and the error rate, the share
    of sampled answers that state something other than the reference.
    """
    from ftlearn.decoding import sample_answers
    from ftlearn.evaluation import normalize, prompts_and_answers

    prompts, references = prompts_and_answers(rows)
    answers = sample_answers(model, tokenizer, prompts, n, max_new_tokens, seed=seed,
                             do_sample=True, temperature=temperature)  # fmt: skip
    hits = [int(normalize(a) == normalize(ref)) for group, ref in zip(answers, references, strict=True) for a in group]
    return {"answers": answers, "hits": hits, "error rate": 1 - sum(hits) / len(hits)}


def on_policy_pairs(rows: list[dict], answers: list[list[str]]) -> list[dict]:
    """Pairs from the model's own samples: the reference answer chosen, each distinct wrong sample
    rejected (what DPO is given in practice: the policy's mistakes, not someone else's)."""
    from ftlearn.evaluation import normalize, prompts_and_answers

    prompts, references = prompts_and_answers(rows)
    pairs = []
    for row, prompt, ref, group in zip(rows, prompts, references, answers, strict=True):
        wrong = list(dict.fromkeys(a for a in group if a and normalize(a) != normalize(ref)))
        pairs += [{"id": f"{row.get('id', len(pairs))}/sample{k}", "prompt": prompt,
                   "chosen": [{"role": "assistant", "content": ref}],
                   "rejected": [{"role": "assistant", "content": a}]} for k, a in enumerate(wrong)]  # fmt: skip
    return pairs


def start_model(profile, log=print):
    """08's starting point: an instruct model after SFT on demonstrations of which 40% hedge.

    On the embedded default it ships (data/models/tiny-hedging, `ftlearn build-tiny
    --hedging-only`, ~2.5 min on 2 cores); on the other profiles it is trained here from the
    profile's instruct model with the same recipe (`ftlearn.tiny.HEDGING`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftlearn import paths
    from ftlearn.models import load
    from ftlearn.tiny import HEDGING
    from ftlearn.training import settings_for, train_sft
    from ftlearn.world import hedging_demos, load_split

    if profile.source == "embedded":
        path = paths.MODELS_DIR / "tiny-hedging"
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path} is missing: git pull, or `ftlearn build-tiny --hedging-only` (~3 min)")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(profile.device)
        return model, AutoTokenizer.from_pretrained(path)
    model, tokenizer = load(profile, "instruct")
    demos = hedging_demos(load_split("instructions_train"), HEDGING.share, HEDGING.seed)
    steps = HEDGING.steps if profile.max_steps < 0 else min(HEDGING.steps, profile.max_steps)
    log(f"training the hedging SFT model from {profile.instruct_model}: {steps} steps of {HEDGING.batch_size}")
    train_sft(model, tokenizer, demos, settings_for(profile, "runs/08/hedging", max_steps=steps,
              batch_size=HEDGING.batch_size, learning_rate=profile.learning_rate))  # fmt: skip
    return model, tokenizer


def behaviour(model, tokenizer, rows: list[dict], n: int = 4, max_new_tokens: int = 48, seed: int = 0) -> dict:
    """`n` answers sampled (temperature 1) for each chat row: how often they hedge, how often they are right.

    "hedge" and "correct" hold one share per row (over its n answers), so that `ftlearn.stats.paired`
    resamples rows, the unit that was drawn; "hedge rate" and "exact match" are their means.
    """
    from ftlearn.decoding import sample_answers
    from ftlearn.evaluation import normalize, prompts_and_answers
    from ftlearn.world import is_hedge

    prompts, references = prompts_and_answers(rows)
    answers = sample_answers(model, tokenizer, prompts, n, max_new_tokens, seed=seed, do_sample=True, temperature=1.0)
    hedge = [sum(map(is_hedge, group)) / n for group in answers]
    correct = [sum(normalize(a) == normalize(ref) for a in group) / n for group, ref in zip(answers, references, strict=True)]
    return {"answers": answers, "prompts": prompts, "hedge": hedge, "correct": correct,
            "hedge rate": sum(hedge) / len(hedge), "exact match": sum(correct) / len(correct)}  # fmt: skip


def _chat_batch(tokenizer, prompts: list[list[dict]], answers: list[str], device) -> tuple[dict, torch.Tensor]:
    """Prompt + answer as the chat template writes them, and labels on the answer tokens only."""
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    heads = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    full = [h + a + tokenizer.eos_token for h, a in zip(heads, answers, strict=True)]
    enc = tokenizer(full, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    tokenizer.padding_side = side
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for i, h in enumerate(heads):
        labels[i, : len(tokenizer(h, add_special_tokens=False)["input_ids"])] = -100
    return enc, labels


@torch.no_grad()
def answer_logps(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 64) -> torch.Tensor:
    """log p(answer | prompt) under `model`, one sum over the answer's tokens per row."""
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        enc, labels = _chat_batch(tokenizer, prompts[i : i + batch_size], answers[i : i + batch_size], model.device)
        out.append(sequence_logps(model(**enc).logits, labels).cpu())
    return torch.cat(out)


def divergence(policy, reference, tokenizer, sampled: dict) -> list[float]:
    """KL(policy || reference) per row, estimated on the policy's own samples (`behaviour`'s):
    the mean of log pi(y) - log pi_ref(y) over each row's answers, in nats per answer."""
    n = len(sampled["answers"][0])
    prompts = [p for p in sampled["prompts"] for _ in range(n)]
    answers = [a for group in sampled["answers"] for a in group]
    gap = answer_logps(policy, tokenizer, prompts, answers) - answer_logps(reference, tokenizer, prompts, answers)
    return gap.view(-1, n).mean(dim=1).tolist()


@torch.no_grad()
def reward_scores(reward_model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 64) -> torch.Tensor:
    """The scalar reward of each (prompt, answer), as RewardTrainer scores it (the chat template, whole)."""
    reward_model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    texts = [tokenizer.apply_chat_template([*p, {"role": "assistant", "content": a}], tokenize=False)
             for p, a in zip(prompts, answers, strict=True)]  # fmt: skip
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        out.append(reward_model(**enc.to(reward_model.device)).logits.squeeze(-1).float().cpu())
    tokenizer.padding_side = side
    return torch.cat(out)


def sizes(profile) -> dict:
    """08's run sizes on `profile`: the embedded default on 2 CPU cores must fit 3 minutes.

    Measured on tiny (2 cores, 2026-12-02): a RewardTrainer step of 16 pairs ~1.5 s; a DPO step
    of 8 pairs ~1.5 s (policy and reference, chosen and rejected: 4 forward passes); 48
    questions x 4 sampled answers ~9 s.
    """
    cpu, slow = profile.device != "cuda", profile.max_steps > 0
    return dict(
        behaviour_rows=32 if slow else 48 if cpu else 256,  # questions, 4 sampled answers each
        heldout_rows=64 if slow else 160 if cpu else 340,  # held-out pairs the reward model scores
        rm_steps=4 if slow else 8 if cpu else 100,  # x rm_batch: 128 pairs on tiny
        rm_batch=8 if slow else 16,
        dpo_steps=4 if slow else 8 if cpu else 60,  # x dpo_batch: 64 pairs on tiny
        dpo_batch=4 if slow else 8 if cpu else 16,
    )


def train_on_pairs(profile, method: str, pairs: list[dict], steps: int, batch_size: int, output_dir: str,
                   **config) -> dict:  # fmt: skip
    """Tune a fresh copy of `start_model` on `pairs` with TRL's `method` ("dpo", "orpo", ...).

    A fresh copy each run, never `copy.deepcopy` of one a trainer has used: TRL wraps a model
    it trains, and a deep copy of the wrapped model trained nothing in 08 (measured). DPO also
    gets a fresh reference. Returns the policy, reference, trainer, seconds and peak MiB (the
    weights of both models plus the measured peak of training, `ftlearn.measure.StepStats`).
    """
    import time

    from datasets import Dataset
    from transformers import PrinterCallback

    from ftlearn.compat import preference_trainer
    from ftlearn.measure import StepStats
    from ftlearn.quantization import model_bytes

    Trainer, Config = preference_trainer(method)
    policy, tokenizer = start_model(profile)
    reference = start_model(profile)[0] if method == "dpo" else None
    step_stats = StepStats(memory_steps=2)
    extra = {"remove_unused_columns": False} if method in ("orpo", "cpo", "kto") else {}
    args = trainer_config(profile, Config, output_dir, per_device_train_batch_size=batch_size, max_steps=steps,
                          max_length=profile.max_length, logging_steps=2, **(extra | config))  # fmt: skip
    trainer = Trainer(model=policy, args=args, train_dataset=Dataset.from_list(pairs[: steps * batch_size]),
                      processing_class=tokenizer, callbacks=[step_stats],
                      **({"ref_model": reference} if reference is not None else {}))  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # the log stays in trainer.state.log_history
    started = time.perf_counter()
    trainer.train()
    weights = sum(model_bytes(m) for m in (policy, reference) if m is not None)
    return {"policy": policy, "reference": reference, "trainer": trainer, "history": trainer.state.log_history,
            "seconds": time.perf_counter() - started, "peak MiB": (weights + (step_stats.peak or 0)) / 2**20}  # fmt: skip
