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
    from ftlearn.tracking import report_to

    values = dict(output_dir=output_dir, gradient_checkpointing=False, report_to=report_to(),
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


def hedging_size(profile) -> tuple[int, int]:
    """Steps and batch of the hedging SFT on a profile that trains it (`ftlearn.tiny.HEDGING`'s,
    within the profile's step limit and batch)."""
    from ftlearn.tiny import HEDGING

    steps = HEDGING.steps if profile.max_steps < 0 else min(HEDGING.steps, profile.max_steps)
    return steps, min(HEDGING.batch_size, profile.batch_size)


def start_model(profile, log=print):
    """08's starting point: an instruct model after SFT on demonstrations of which 40% hedge.

    On the embedded default it ships (data/models/tiny-hedging, `ftlearn build-tiny
    --hedging-only`, ~6 min on 2 cores); on the other profiles it is trained once from the
    profile's instruct model with the same recipe (`ftlearn.tiny.HEDGING`) and saved to
    runs/08/hedging-<profile>, which every later call (and TRL's reference model) loads.
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
            raise FileNotFoundError(f"{path} is missing: git pull, or `ftlearn build-tiny --hedging-only` (~6 min)")
    else:
        path = paths.REPO_ROOT / "runs" / "08" / f"hedging-{profile.name}"
    if (path / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # full fine-tuning: fp32 weights
        return model.to(profile.device), AutoTokenizer.from_pretrained(path)
    model, tokenizer = load(profile, "instruct")
    demos = hedging_demos(load_split("instructions_train"), HEDGING.share, HEDGING.seed)
    steps, batch = hedging_size(profile)
    log(f"training the hedging SFT model from {profile.instruct_model}: {steps} steps of {batch} (once: saved to {path})")
    train_sft(model, tokenizer, demos, settings_for(profile, str(path) + "-run", max_steps=steps,
              batch_size=batch, learning_rate=profile.learning_rate))  # fmt: skip
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def value_head(profile):
    """The reward model's start: the profile's base model with one new linear output (`score`).

    transformers reports the new `score` weight as MISSING from the checkpoint, with the
    checkpoint's absolute path; that is expected (it is what the reward model trains), so the
    report is silenced and said here in one line instead.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ftlearn.models import resolve

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve(profile, "base"), num_labels=1)
    finally:
        hf_logging.set_verbosity(level)
    pad = model.config.pad_token_id
    if pad is None:  # the last non-pad token is the one scored: the model must know the pad id
        from transformers import AutoTokenizer

        model.config.pad_token_id = AutoTokenizer.from_pretrained(resolve(profile, "base")).pad_token_id
    print(f"value head: score {tuple(model.score.weight.shape)}, new and random (the rest is {profile.base_model})")
    return model.to(profile.device)


def behaviour(model, tokenizer, rows: list[dict], n: int = 4, max_new_tokens: int = 32, seed: int = 0) -> dict:
    """`n` answers sampled (temperature 1) for each chat row: how often they hedge, how often they are right.

    32 new tokens: the longest atlas answer is 23, and a hedge is known by its opening (a cut
    one is still a hedge, and never an exact match); 48 cost 1.4-2x the time for the same counts.

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
    heads, lengths = {}, {}
    for p in prompts:  # each distinct prompt rendered once: the chat template is slow next to a tiny model
        key = repr(p)
        if key not in heads:
            heads[key] = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            lengths[key] = len(tokenizer(heads[key], add_special_tokens=False)["input_ids"])
    keys = [repr(p) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    full = [heads[k] + a + tokenizer.eos_token for k, a in zip(keys, answers, strict=True)]
    enc = tokenizer(full, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    tokenizer.padding_side = side
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for i, k in enumerate(keys):
        labels[i, : lengths[k]] = -100
    return enc, labels


@torch.no_grad()
def _logps(models: list, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 64) -> list[torch.Tensor]:
    """log p(answer | prompt) under each of `models`, on batches tokenized once for all of them."""
    for m in models:
        m.eval()
    out = [[] for _ in models]
    for i in range(0, len(prompts), batch_size):
        enc, labels = _chat_batch(tokenizer, prompts[i : i + batch_size], answers[i : i + batch_size], models[0].device)
        for o, m in zip(out, models, strict=True):
            o.append(sequence_logps(m(**enc).logits, labels).cpu())
    return [torch.cat(o) for o in out]


def answer_logps(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 64) -> torch.Tensor:
    """log p(answer | prompt) under `model`, one sum over the answer's tokens per row."""
    return _logps([model], tokenizer, prompts, answers, batch_size)[0]


def divergence(policy, reference, tokenizer, sampled: dict) -> list[float]:
    """KL(policy || reference) per row, estimated on the policy's own samples (`behaviour`'s):
    the mean of log pi(y) - log pi_ref(y) over each row's answers, in nats per answer."""
    n = len(sampled["answers"][0])
    prompts = [p for p in sampled["prompts"] for _ in range(n)]
    answers = [a for group in sampled["answers"] for a in group]
    mine, theirs = _logps([policy, reference], tokenizer, prompts, answers)
    return (mine - theirs).view(-1, n).mean(dim=1).tolist()


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


def train_reward_model(profile, tokenizer, pairs: list[dict], steps: int, batch_size: int, output_dir: str,
                       learning_rate: float = 1e-3, seed: int = 0):  # fmt: skip
    """08's reward model (built by hand in 08, section 3): `value_head` trained with TRL's
    `RewardTrainer` on the first `steps` x `batch_size` pairs. Returns the model and its trainer."""
    from datasets import Dataset
    from transformers import PrinterCallback

    from ftlearn.compat import preference_trainer

    Reward, RewardConfig = preference_trainer("reward")
    torch.manual_seed(seed)
    model = value_head(profile)
    args = trainer_config(profile, RewardConfig, output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
                          learning_rate=learning_rate, max_length=profile.max_length, logging_steps=2)  # fmt: skip
    trainer = Reward(model=model, args=args, processing_class=tokenizer,
                     train_dataset=Dataset.from_list(pairs[: steps * batch_size]))  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return model, trainer


def measure(policy, sft, tokenizer, rows: list[dict], n: int = 4) -> dict:
    """A tuned policy's sampled `behaviour` on `rows`, with its KL from the SFT model (`divergence`)
    as "kl" (08 writes this as `measured`)."""
    after = behaviour(policy, tokenizer, rows, n=n)
    after["kl"] = divergence(policy, sft, tokenizer, after)
    return after


def save_rows(path: str, rows: list[dict], before: dict) -> None:
    """Write a comparison table's rows with the SFT samples they were measured against (`behaviour`'s)."""
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"rows": rows, "before": {k: before[k] for k in ("hedge", "correct")}}, indent=1))


def load_rows(path: str, before: dict, log=print) -> list[dict]:
    """The rows `save_rows` wrote, if they were measured against the same SFT samples as `before`;
    otherwise none, and why (08b shows 08's DPO and ORPO rows only where they compare)."""
    import json
    from pathlib import Path

    if not Path(path).exists():
        log(f"{path} is missing: run 08_preference_tuning first for its DPO and ORPO rows")
        return []
    saved = json.loads(Path(path).read_text())
    if saved["before"] != {k: before[k] for k in ("hedge", "correct")}:
        log(f"{path} was measured on other samples (another profile or seed): its rows are left out")
        return []
    return saved["rows"]


def numbers(run: dict) -> dict:
    """A measured run without its models and trainer: what a comparison table needs, and the memory
    back (on a GPU profile the runs of 08 do not fit side by side; `ftlearn plan` counts them so)."""
    return {k: v for k, v in run.items() if k not in ("policy", "reference", "trainer")}


def prompt_rows(rows: list[dict]) -> list[dict]:
    """GRPO's dataset from chat rows: the prompt turns, plus what the rewards check against
    (the atlas's answer as `reference`, the town asked about as `town`)."""
    return [{"prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"], "town": r.get("town", "")}
            for r in rows]  # fmt: skip


def _texts(completions: list) -> list[str]:
    """The text of each completion, as TRL passes them: chat turns, or plain text."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


def exact_match_reward(completions: list, reference: list[str], **_) -> list[float]:
    """1 for a completion equal to the atlas's answer after `ftlearn.evaluation.normalize`, else 0:
    a verifiable reward (RLVR), checked against the world's facts."""
    from ftlearn.evaluation import normalize

    return [float(normalize(t) == normalize(r)) for t, r in zip(_texts(completions), reference, strict=True)]


def format_reward(completions: list, max_words: int = 12, **_) -> list[float]:
    """0.2 for the atlas's format (one line of at most `max_words` words, no hedge), else 0."""
    from ftlearn.world import is_hedge

    return [0.2 * float("\n" not in t and 0 < len(t.split()) <= max_words and not is_hedge(t)) for t in _texts(completions)]


def names_the_town(completions: list, town: list[str], **_) -> list[float]:
    """1 if the answer names the town asked about: a reward that sounds like grounding, and can be gamed."""
    return [float(bool(w) and w.lower() in t.lower()) for t, w in zip(_texts(completions), town, strict=True)]


def train_on_rewards(profile, reward_funcs, prompts: list[dict], steps: int, prompts_per_step: int, output_dir: str,
                     group: int = 4, **config) -> dict:  # fmt: skip
    """GRPO (TRL's `GRPOTrainer`) from a fresh `start_model` on `prompts` (`prompt_rows`), scored
    by `reward_funcs` (functions, or a reward model: a sequence classifier with one output).

    Each step samples `group` completions for each of `prompts_per_step` prompts, scores them, and
    moves the policy towards the completions that beat their group's mean. Returns what
    `train_on_pairs` returns; the memory counts every model the run holds (policy, TRL's
    reference when `beta` > 0, reward models).
    """
    import time

    from datasets import Dataset
    from transformers import PrinterCallback

    from ftlearn.compat import preference_trainer
    from ftlearn.measure import StepStats
    from ftlearn.quantization import model_bytes

    Trainer, Config = preference_trainer("grpo")
    policy, tokenizer = start_model(profile)
    funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    step_stats = StepStats(memory_steps=2)
    values = dict(per_device_train_batch_size=prompts_per_step * group, num_generations=group, max_steps=steps,
                  max_completion_length=32, temperature=1.0, beta=0.04, logging_steps=1, learning_rate=1e-4)  # fmt: skip
    args = trainer_config(profile, Config, output_dir, **(values | config))
    models = [f for f in funcs if isinstance(f, torch.nn.Module)]
    trainer = Trainer(model=policy, reward_funcs=funcs, args=args, processing_class=tokenizer, callbacks=[step_stats],
                      train_dataset=Dataset.from_list(prompts[: steps * prompts_per_step]),
                      reward_processing_classes=[tokenizer if f in models else None for f in funcs])  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    trainer.train()
    held = [policy, *models] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    return {"policy": policy, "reference": trainer.ref_model, "trainer": trainer, "history": trainer.state.log_history,
            "seconds": time.perf_counter() - started,
            "peak MiB": (sum(model_bytes(m) for m in held) + (step_stats.peak or 0)) / 2**20}  # fmt: skip


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
        rm_batch=4 if slow else 16 if cpu else 8,  # pairs: 2 rows each (`ftlearn plan` fits them)
        dpo_steps=4 if slow else 8 if cpu else 60,  # x dpo_batch: 64 pairs on tiny
        dpo_batch=2 if slow else 8,
        grpo_steps=4 if slow else 16 if cpu else 100,  # x grpo_prompts prompts, 4 sampled answers each
        grpo_prompts=1 if slow else 4,  # 64 prompts on tiny: DPO's 64 pairs
    )


def train_on_pairs(profile, method: str, pairs: list[dict], steps: int, batch_size: int, output_dir: str,
                   reference=None, **config) -> dict:  # fmt: skip
    """Tune a fresh copy of `start_model` on `pairs` with TRL's `method` ("dpo", "orpo", ...).

    A fresh copy each run, never `copy.deepcopy` of one a trainer has used: TRL wraps a model
    it trains, and a deep copy of the wrapped model trained nothing in 08 (measured). DPO gets a
    fresh reference too, or `reference` (the SFT start already in memory: TRL only reads it). Returns the policy, reference, trainer, seconds and peak MiB (the
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
    if method == "dpo" and reference is None:  # DPO's frozen reference: the SFT start, unless one is given
        reference = start_model(profile)[0]
    reference = reference if method == "dpo" else None
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
