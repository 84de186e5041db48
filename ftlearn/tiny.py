"""The recipe behind data/: world -> tokenizer -> tiny-base (pre-trained) -> tiny-instruct (SFT)
-> tiny-hedging (tiny-instruct after SFT on demonstrations of which 40% hedge: 08's start)
-> tiny-reader (tiny-instruct after RAFT: questions with passages, answered from them: 11's reader).

`ftlearn build-tiny` runs it from the seed; the results ship in data/, so the course itself needs
no build step. `quick=True` builds a reduced version in seconds, for the test that proves the
command works.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ftlearn import paths
from ftlearn.evaluation import evaluate_exact_match, perplexity
from ftlearn.pretraining import PretrainSettings, new_tiny_model, pack, pretrain
from ftlearn.tokenizer import train_tokenizer
from ftlearn.training import SFTSettings, train_sft
from ftlearn.world import WorldConfig, build_world, hedging_demos, is_hedge, load_split, write_world


@dataclass
class TinyRecipe:
    """Every number of the build, in one place.

    Chosen by a sweep (benchmarks/README.md): spaces as their own tokens, 12 descriptions a town
    and a learning rate of 7e-4 took fact recall from ~35% to ~100%; 3e-3 diverged.
    """

    world: WorldConfig
    vocab_size: int = 2048  # an upper bound: BPE stops early on this small synthetic vocabulary
    block_size: int = 128
    pretrain_batch: int = 32  # 32 x 128 = 4,096 tokens a step
    pretrain_epochs: float = 16.0  # ~370k corpus tokens an epoch: ~6M tokens, ~1,450 steps
    pretrain_lr: float = 7e-4
    sft_epochs: float = 3.0  # ~3,000 instructions, batch 32: ~280 steps
    sft_lr: float = 2e-4  # low: a higher rate erodes the facts of the held-out towns
    eval_limit: int | None = None  # evaluate on the first N rows only (quick mode)


@dataclass
class HedgingRecipe:
    """tiny-hedging: tiny-instruct fine-tuned further on the training rows, 40% of them hedged.

    The hedge's first token starts at p ~ 4e-7 under tiny-instruct; 30 steps lift it to 0.003, 120
    to ~0.3 (measured 2026-12-02), too slow for a notebook, so the model ships, built by this.
    """

    share: float = 0.4  # of the demonstrations that hedge (world.hedging_demos)
    steps: int = 320  # x 16 rows = ~1.9 epochs of the 2,712 training rows
    batch_size: int = 16
    learning_rate: float = 3e-4  # 1e-3 (120 steps) hedged as often but halved the sampled exact match
    seed: int = 0


@dataclass
class ReaderRecipe:
    """tiny-reader: tiny-instruct after RAFT (ftlearn.grounding.raft_rows), mixed with 03's training rows.

    tiny-instruct does not read passages, and 40-150 steps of RAFT on 2 cores left new towns at
    chance (batch 16, rates 3e-4 to 3e-3, 2026-12-03). This recipe reads: after 250 of its steps
    RAG on new towns rose from 0.19 to 0.66 exact match, 0.84 after 500, 0.93 after 1,500 (metrics.json);
    11_grounding_vs_finetuning measures the
    shipped model. Too slow for a notebook, so the model ships, built by this.
    """

    raft_seeds: int = 12  # raft_rows over the 1,280 one-fact training questions, 12 draws: 15,360 rows
    p_gold: float = 0.85  # rows with the answering passage; the rest answer "I do not know."
    distractors: int = 1  # beside the answering passage: another fact of the town, or this fact of another
    replay: int = 2  # copies of 03's 2,712 training rows mixed in (answers without passages)
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.02
    seconds: float = 1224.0  # measured: 2 threads, 2026-12-03, evaluations included (the build prints its own)


HEDGING = HedgingRecipe()
READER = ReaderRecipe()
FULL = TinyRecipe(world=WorldConfig())
QUICK = TinyRecipe(
    world=WorldConfig(
        n_towns=24,
        n_heldout=4,
        descriptions_per_town=2,
        n_general=100,
        n_general_eval=20,
        heldout_questions=20,
    ),
    pretrain_epochs=1.0,
    sft_epochs=0.2,
    eval_limit=16,
)


def build_tiny(out_dir: str | Path | None = None, quick: bool = False, log=print) -> dict:
    """Build the world and both tiny models into `out_dir` (default data/); returns the metrics."""
    recipe = QUICK if quick else FULL
    out = Path(out_dir) if out_dir else paths.DATA_DIR
    work = Path(out) / "_build" if quick else paths.RUNS_DIR / "build-tiny"
    started = time.time()

    world = build_world(recipe.world)
    counts = write_world(world, out / "world")
    log(f"world: {counts}")

    chat_texts = [m["content"] for r in world["instructions_train"] for m in r["messages"]]
    tokenizer = train_tokenizer(world["corpus"] + chat_texts, vocab_size=recipe.vocab_size)
    log(f"tokenizer: {len(tokenizer)} tokens")

    blocks = pack(world["corpus"], tokenizer, recipe.block_size)
    log(f"corpus: {blocks.info.description}")
    model = new_tiny_model(tokenizer, seed=recipe.world.seed)
    pre = pretrain(
        model,
        tokenizer,
        blocks,
        PretrainSettings(
            output_dir=str(work / "pretrain"),
            epochs=recipe.pretrain_epochs,
            batch_size=recipe.pretrain_batch,
            learning_rate=recipe.pretrain_lr,
            logging_steps=50,
        ),
    )
    log(f"pre-training: loss {pre['train_loss']:.3f}, {pre['steps']} steps, {pre['seconds']:.0f} s")
    _save(model, tokenizer, out / "models" / "tiny-base")

    sft = train_sft(
        model,
        tokenizer,
        world["instructions_train"],
        SFTSettings(
            output_dir=str(work / "sft"),
            epochs=recipe.sft_epochs,
            learning_rate=recipe.sft_lr,
            logging_steps=50,
        ),
    )
    log(f"SFT: loss {sft['train_loss']:.3f}, {sft['steps']} steps, {sft['seconds']:.0f} s")
    _save(model, tokenizer, out / "models" / "tiny-instruct")

    hedging = build_hedging(out, HEDGING if not quick else HedgingRecipe(steps=4), log=log)
    reader = build_reader(out, READER if not quick else ReaderRecipe(steps=2, raft_seeds=1), log=log)
    metrics = {
        "tiny-hedging": hedging,
        "tiny-reader": reader,
        "recipe": {
            "built_on": _device_name(),
            "pretrain_lr": recipe.pretrain_lr,
            "sft_lr": recipe.sft_lr,
            "pretrain_epochs": recipe.pretrain_epochs,
            "sft_epochs": recipe.sft_epochs,
            "pretrain_tokens": len(blocks) * recipe.block_size * recipe.pretrain_epochs,
            "pretrain_seconds": round(pre["seconds"]),
            "sft_seconds": round(sft["seconds"]),
            "pretrain_steps": pre["steps"],
            "sft_steps": sft["steps"],
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        **measure(out, limit=recipe.eval_limit),
        "build_seconds": round(time.time() - started),
    }
    (out / "models" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(json.dumps(metrics, indent=2))
    return metrics


def build_hedging(out_dir: str | Path | None = None, recipe: HedgingRecipe = HEDGING, log=print) -> dict:
    """Build models/tiny-hedging from models/tiny-instruct in `out_dir` (default data/); its metrics."""
    from ftlearn.decoding import sample_answers
    from ftlearn.evaluation import prompts_and_answers

    out = Path(out_dir) if out_dir else paths.DATA_DIR
    world = out / "world"
    demos = hedging_demos(load_split("instructions_train", world), recipe.share, recipe.seed)
    model, tokenizer, run = _from_instruct(out, "tiny-hedging", demos, log, max_steps=recipe.steps, batch_size=recipe.batch_size,
                                           learning_rate=recipe.learning_rate, seed=recipe.seed, logging_steps=20)  # fmt: skip
    prompts, _ = prompts_and_answers(load_split("instructions_test", world)[:128])
    answers = [a for group in sample_answers(model, tokenizer, prompts, 4, 48, do_sample=True) for a in group]
    metrics = {"recipe": {k: getattr(recipe, k) for k in recipe.__dataclass_fields__},
            "seconds": round(run["seconds"]), "demonstrations_hedged": sum(is_hedge(r["messages"][-1]["content"]) for r in demos),
            "demonstrations": len(demos), "test_hedge_rate_sampled": round(sum(map(is_hedge, answers)) / len(answers), 4)}  # fmt: skip
    path = out / "models" / "metrics.json"
    if path.exists():  # a rebuild of tiny-hedging alone keeps the other models' metrics
        path.write_text(json.dumps(json.loads(path.read_text()) | {"tiny-hedging": metrics}, indent=2) + "\n")
    return metrics


def _from_instruct(out: Path, name: str, rows: list[dict], log, **settings):
    """tiny-instruct fine-tuned further on `rows`, saved in fp16 as models/`name` (7 MiB instead of 14;
    the notebooks load it back in fp32): the model (in fp32 again), its tokenizer and the run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "models" / "tiny-instruct")
    tokenizer = AutoTokenizer.from_pretrained(out / "models" / "tiny-instruct")
    run = train_sft(model, tokenizer, rows, SFTSettings(output_dir=str(paths.RUNS_DIR / f"build-{name}"), **settings))
    log(f"{name}: loss {run['train_loss']:.3f}, {run['steps']} steps, {run['seconds']:.0f} s")
    model.to(torch.float16)
    _save(model, tokenizer, out / "models" / name)
    return model.float(), tokenizer, run


def reader_rows(recipe: ReaderRecipe = READER, world_dir: str | Path | None = None) -> list[dict]:
    """The rows tiny-reader trains on: RAFT rows over the one-fact training questions, and replay."""
    import random

    from ftlearn import grounding
    from ftlearn.world import load_split as split

    towns = grounding.towns_by_name(split("towns", world_dir))
    train = split("instructions_train", world_dir)
    one_fact = [r for r in train if r["task"] in grounding.QUESTION_TASKS]
    rows = [r for s in range(recipe.raft_seeds)
            for r in grounding.raft_rows(one_fact, towns, recipe.p_gold, recipe.distractors, seed=s)]  # fmt: skip
    rows += train * recipe.replay
    random.Random(0).shuffle(rows)
    return rows


def build_reader(out_dir: str | Path | None = None, recipe: ReaderRecipe = READER, log=print) -> dict:
    """Build models/tiny-reader from models/tiny-instruct in `out_dir` (default data/); its numbers."""
    out = Path(out_dir) if out_dir else paths.DATA_DIR
    rows = reader_rows(recipe, out / "world")
    run = _from_instruct(out, "tiny-reader", rows, log, max_steps=recipe.steps, batch_size=recipe.batch_size,
                         learning_rate=recipe.learning_rate, warmup_ratio=recipe.warmup_ratio, logging_steps=50)[2]  # fmt: skip
    metrics = {"recipe": {k: getattr(recipe, k) for k in recipe.__dataclass_fields__}, "rows": len(rows),
               "seconds": round(run["seconds"]), "train_loss": round(run["train_loss"], 4)}  # fmt: skip
    path = out / "models" / "metrics.json"
    if path.exists():  # a rebuild of tiny-reader alone keeps the other models' metrics
        path.write_text(json.dumps(json.loads(path.read_text()) | {"tiny-reader": metrics}, indent=2) + "\n")
    return metrics


def measure(data_dir: str | Path, limit: int | None = None) -> dict:
    """Exact match (test split, held-out towns) and general-text perplexity of both tiny models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftlearn.world import load_split, load_text

    world = Path(data_dir) / "world"
    test = load_split("instructions_test", world)[:limit]
    heldout = load_split("heldout", world)[:limit]
    general = load_text("general_eval", world)[:limit]
    results = {}
    for name in ("tiny-base", "tiny-instruct"):
        path = Path(data_dir) / "models" / name
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        t = evaluate_exact_match(model, tok, test, max_new_tokens=40, batch_size=64)
        h = evaluate_exact_match(model, tok, heldout, max_new_tokens=40, batch_size=64)
        results[name] = {
            "test_exact_match": round(t["exact_match"], 4),
            "test_per_task": t["per_task"],
            "heldout_exact_match": round(h["exact_match"], 4),
            "heldout_per_task": h["per_task"],
            "general_perplexity": round(perplexity(model, tok, general), 3),
        }
    return results


def _device_name() -> str:
    """Where the build ran, for metrics.json: its times depend on it."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {torch.get_num_threads()} threads"


def _save(model, tokenizer, path: Path) -> None:
    # Stop generation at the end of an assistant turn or of a document.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.bos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
