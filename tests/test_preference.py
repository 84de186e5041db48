"""ftlearn.preference: bad pairs named, and each hand-written loss equal to TRL's on the same batch."""

import copy

import pytest
import torch
from datasets import Dataset

from ftlearn import profiles
from ftlearn.compat import make_config
from ftlearn.models import resolve
from ftlearn.preference import (
    bradley_terry_loss,
    dpo_loss,
    group_advantages,
    sequence_logps,
    validate_pairs,
)
from ftlearn.world import load_split

PROMPT = [{"role": "user", "content": "On which river does Norton stand?"}]
CHOSEN = [{"role": "assistant", "content": "Cress"}]
REJECTED = [{"role": "assistant", "content": "Well, maybe the Cress, I think."}]


def pairs(n: int = 8) -> list[dict]:
    return load_split("preferences")[:n]


def test_the_shipped_pairs_are_valid():
    report = validate_pairs(load_split("preferences"))
    assert report.ok, str(report)
    assert report.n_rows > 1000


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prompt": PROMPT, "chosen": CHOSEN}, "no rejected"),
        ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": []}, "no rejected"),
        ({"chosen": CHOSEN, "rejected": REJECTED}, "no prompt"),
        ({"prompt": PROMPT, "chosen": CHOSEN, "rejected": copy.deepcopy(CHOSEN)}, "the same answer"),
        ({"prompt": "Q?", "chosen": "Cress", "rejected": "Cress "}, "the same answer"),
        ({"prompt": PROMPT, "chosen": "Cress", "rejected": REJECTED}, "the prompt is chat turns but chosen is text"),
        ({"prompt": PROMPT, "chosen": [{"role": "user", "content": "Cress"}], "rejected": REJECTED},
         "chosen is not one assistant turn"),
        ({"prompt": "Q?", "chosen": CHOSEN, "rejected": REJECTED}, "the prompt is text but an answer is not"),
        ({"prompt": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
          "chosen": CHOSEN, "rejected": REJECTED}, "is 'assistant' where 'user' was expected"),
        ({"prompt": [{"role": "user"}], "chosen": CHOSEN, "rejected": REJECTED}, "prompt: turn 1 content"),
        ({"prompt": 3, "chosen": CHOSEN, "rejected": REJECTED}, "prompt is int"),
    ],
)
def test_a_bad_pair_is_named_with_its_row_and_fix(row, expected):
    report = validate_pairs([{"id": "ok", "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}, row])
    assert not report.ok and len(report.problems) == 1, str(report)
    problem = report.problems[0]
    assert problem.where == "index 1" and expected in problem.problem, str(problem)
    assert problem.fix and "Fix:" in str(report)


def test_duplicate_ids_are_named():
    row = {"id": "a", "prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
    report = validate_pairs([row, dict(row)])
    assert [p.problem for p in report.problems] == ["duplicate id, first used at index 0"]


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (-torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.tensor(2.0))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected.item(), abs=1e-6)
    assert bradley_terry_loss(chosen, rejected, margin=torch.tensor([2.0, 0.0])).item() == pytest.approx(
        torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_bradley_terry_equals_trls_reward_trainer(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = resolve(profiles.get("tiny"), "base")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(path)
    args = make_config(RewardConfig, output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=160,
                        report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs()), processing_class=tok)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(model, dict(batch))
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = rewards.chunk(2)
    assert not torch.allclose(chosen, rejected)  # a batch that tests something
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(theirs.item(), abs=1e-5)


def test_dpo_equals_trls_dpo_trainer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    path = resolve(profiles.get("tiny"), "instruct")
    reference = AutoModelForCausalLM.from_pretrained(path)
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that has moved away from the reference, so the loss is not log 2
        for p in policy.model.layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    tok = AutoTokenizer.from_pretrained(path)
    beta = 0.2
    args = make_config(DPOConfig, output_dir=str(tmp_path), per_device_train_batch_size=4, max_length=160, beta=beta,
                     precompute_ref_log_probs=False, report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(pairs()),
                         processing_class=tok)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    policy.eval()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, dict(batch))
        logps = {name: sequence_logps(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                      labels).chunk(2) for name, m in (("policy", policy), ("reference", reference))}
    ours, chosen_reward, rejected_reward = dpo_loss(*logps["policy"], *logps["reference"], beta=beta)
    assert abs(ours.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3  # the perturbation moved it
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert (chosen_reward - rejected_reward).shape == (4,)  # one implicit-reward margin a pair of the batch


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(adv[:4], (rewards[:4] - 0.5) / (std + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4)), "a group of equal rewards has no advantage"
    assert torch.allclose(group_advantages(rewards, 4, scale="none")[:4], rewards[:4] - 0.5)
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trls_grpo_trainer(tmp_path, scale):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    path = resolve(profiles.get("tiny"), "instruct")
    given = [0.0, 1.0, 3.0, 1.0, 2.0, 2.0, 2.0, 5.0]  # 2 prompts x 4 completions, in the order TRL scores them

    def reward(completions, **_):
        return given[: len(completions)]

    args = make_config(GRPOConfig, output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, scale_rewards=scale, report_to="none", use_cpu=True,
                      disable_tqdm=True)
    prompts = [{"prompt": r["prompt"]} for r in pairs(2)]
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward, args=args,
                          train_dataset=Dataset.from_list(prompts), processing_class=AutoTokenizer.from_pretrained(path))
    inputs = [p for p in prompts for _ in range(4)]  # each prompt once per generation, as TRL's sampler repeats it
    theirs = trainer._generate_and_score_completions(inputs)["advantages"]
    ours = group_advantages(torch.tensor(given), group_size=4, scale=scale)
    assert torch.allclose(theirs.flatten().float(), ours, atol=1e-5), (theirs, ours)


@pytest.mark.parametrize("name", ["dpo", "reward", "grpo", "orpo", "kto"])
def test_every_preference_trainer_is_found_where_trl_keeps_it(name):
    from ftlearn.compat import preference_trainer

    trainer, config = preference_trainer(name)
    assert trainer.__name__.lower().startswith(name[:3]) and config.__name__.endswith("Config")


def test_an_unknown_preference_method_is_named():
    from ftlearn.compat import preference_trainer

    with pytest.raises(ValueError, match="unknown preference method 'ppo'"):
        preference_trainer("ppo")


@pytest.mark.parametrize("name", ["reward", "dpo", "grpo"])
def test_trainer_config_takes_the_profiles_precision_not_trls_bf16_default(tmp_path, name):
    from ftlearn.compat import preference_trainer
    from ftlearn.preference import trainer_config

    _, config_class = preference_trainer(name)
    assert make_config(config_class, output_dir=str(tmp_path), use_cpu=True).bf16, "TRL's default this guards against"
    sizes = dict(per_device_train_batch_size=8, **({"num_generations": 4} if name == "grpo" else {}))
    args = trainer_config(profiles.get("tiny"), config_class, str(tmp_path), **sizes)
    checkpointing = [getattr(args, k) for k in ("gradient_checkpointing", "activation_checkpointing") if hasattr(args, k)]
    assert not args.bf16 and not args.fp16 and checkpointing and not any(checkpointing) and args.use_cpu
    assert args.per_device_train_batch_size == 8


def test_heldout_pairs_are_new_valid_and_from_the_rows_given():
    from ftlearn.preference import heldout_pairs

    test = load_split("instructions_test")
    held = heldout_pairs(test)
    assert validate_pairs(held).ok and len(held) == len(test)
    assert not {r["id"] for r in held} & {r["id"] for r in load_split("preferences")}
    for pair, row in zip(held, test, strict=True):
        assert pair["chosen"][0]["content"] == row["messages"][-1]["content"] != pair["rejected"][0]["content"]
    assert heldout_pairs(test) == held, "deterministic for a seed"


def test_on_policy_pairs_reject_each_distinct_wrong_sample_only():
    from ftlearn.preference import on_policy_pairs

    rows = [{"id": "q1", "messages": [*PROMPT, {"role": "assistant", "content": "Cress"}]},
            {"id": "q2", "messages": [*PROMPT, {"role": "assistant", "content": "Amber"}]}]  # fmt: skip
    answers = [["Cress", "cress.", "Ivy", "Ivy"], ["Amber", "Amber", "Amber", "Amber"]]
    pairs = on_policy_pairs(rows, answers)
    assert [(p["id"], p["rejected"][0]["content"]) for p in pairs] == [("q1/sample0", "Ivy")]
    assert pairs[0]["chosen"][0]["content"] == "Cress" and validate_pairs(pairs).ok


def test_sampled_errors_count_the_answers_that_miss():
    from ftlearn.models import load
    from ftlearn.preference import sampled_errors

    model, tok = load(profiles.get("tiny"), "instruct")
    rows = load_split("instructions_test")[:16]
    found = sampled_errors(model, tok, rows, n=4)
    assert len(found["hits"]) == 64 and [len(a) for a in found["answers"]] == [4] * 16
    assert found["error rate"] == pytest.approx(1 - sum(found["hits"]) / 64)
    greedy = sampled_errors(model, tok, rows, n=1, temperature=1e-4)  # near-greedy: tiny-instruct's 90%
    assert greedy["error rate"] < 0.5


def test_hedging_demos_hedge_the_share_asked_and_keep_the_rest():
    from ftlearn.world import hedged, hedging_demos, is_hedge

    rows = load_split("instructions_train")[:400]
    demos = hedging_demos(rows, 0.4, seed=0)
    hedged_rows = [d for d in demos if is_hedge(d["messages"][-1]["content"])]
    assert 0.3 < len(hedged_rows) / len(rows) < 0.5
    assert demos == hedging_demos(rows, 0.4, seed=0), "deterministic from the seed"
    for d, r in zip(demos, rows, strict=True):
        answer = r["messages"][-1]["content"]
        assert d["messages"][-1]["content"] in (answer, hedged(r["town"], answer))
        assert d["messages"][:-1] == r["messages"][:-1]
    assert not any(is_hedge(r["messages"][-1]["content"]) for r in rows), "the atlas itself never hedges"


def test_the_shipped_pairs_reject_the_worlds_hedge():
    from ftlearn.world import hedged, is_hedge

    pairs = load_split("preferences")
    hedges = [p for p in pairs if is_hedge(p["rejected"][0]["content"])]
    assert len(hedges) > len(pairs) / 3
    p = hedges[0]
    town = p["id"].split("/")[0]
    assert p["rejected"][0]["content"] == hedged(town, p["chosen"][0]["content"])


def test_sizes_fit_the_embedded_default_and_grow_on_a_gpu():
    from dataclasses import replace

    from ftlearn.preference import sizes

    tiny = profiles.get("tiny")
    small, big = sizes(tiny), sizes(replace(tiny, device="cuda"))
    assert small["dpo_steps"] * small["dpo_batch"] <= 64, "08's 3 minutes on 2 cores: 64 DPO pairs a run"
    for run in ("rm", "dpo"):  # more examples on a GPU, in batches `ftlearn plan` fits on a T4
        assert big[f"{run}_steps"] * big[f"{run}_batch"] > small[f"{run}_steps"] * small[f"{run}_batch"]
    assert big["grpo_steps"] * big["grpo_prompts"] > small["grpo_steps"] * small["grpo_prompts"]
    assert big["behaviour_rows"] > small["behaviour_rows"] and big["heldout_rows"] > small["heldout_rows"]


def test_the_plan_sizes_08_from_the_same_sizes_and_drops_measured_models():
    from ftlearn import plan
    from ftlearn.preference import hedging_size, numbers, sizes

    for name in ("tiny", "smol", "t4"):
        p = profiles.on_target(name)
        s, runs = sizes(p), plan.catalogue(p)
        assert runs["08_preference_tuning/DPO"].batch_size == 2 * s["dpo_batch"], "a pair is two rows"
        assert runs["08b_rlhf_grpo/GRPO"].batch_size == 4 * s["grpo_prompts"] and runs["08b_rlhf_grpo/GRPO"].count == 3
        assert ("08_preference_tuning/hedging SFT" in runs) == (p.source != "embedded")
        if p.source != "embedded":
            assert runs["08_preference_tuning/hedging SFT"].batch_size == hedging_size(p)[1] <= p.batch_size
    kept = numbers({"policy": 1, "reference": 2, "trainer": 3, "hedge": [0.5], "seconds": 1.0})
    assert kept == {"hedge": [0.5], "seconds": 1.0}


def test_behaviour_counts_hedges_and_hits_per_question():
    from ftlearn.preference import behaviour, start_model

    model, tok = start_model(profiles.get("tiny"))
    rows = load_split("instructions_test")[:6]
    b = behaviour(model, tok, rows, n=2, max_new_tokens=40)
    assert len(b["hedge"]) == len(b["correct"]) == 6 and all(len(a) == 2 for a in b["answers"])
    assert all(h + c <= 1 for h, c in zip(b["hedge"], b["correct"], strict=True)), "a hedge is never an exact match"
    assert b["hedge rate"] == pytest.approx(sum(b["hedge"]) / 6)
