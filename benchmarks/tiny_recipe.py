"""The sweep behind the tiny models' recipe (ftlearn/tiny.py): many recipes side by side in one run.

    NPROC=12 python benchmarks/tiny_recipe.py CONFIGS.json RESULTS.jsonl [NAME ...]

CONFIGS.json is a list of dicts: name, tokens (pre-training budget), lr, block, batch, hidden,
layers, seed, world (WorldConfig overrides) and sfts (a list of {lr, epochs}). For each, it
builds the world and tokenizer as `ftlearn build-tiny` does, pre-trains, then fine-tunes from the
same base once per SFT setting, and scores fact recall, quiz-format answers of the base model
(plain text, no chat markup) and chat exact match on the test split and the held-out towns.

A plain PyTorch loop (AdamW, cosine schedule, 5% warm-up, clipping at 1.0: the Trainer's
defaults) stands in for the Trainer and SFTTrainer the build uses, so that a dozen recipes run
at once, one process each, on one GPU (~4 minutes on an H100 for twelve). Compare recipes within
one run; the build itself then reproduces the winner with the real libraries.
"""

import json
import math
import os
import random
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ftlearn import tokenizer as T
from ftlearn.evaluation import generate, normalize
from ftlearn.world import WorldConfig, build_world


def cosine(step, total, warm):
    if step < warm:
        return (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * p))


def train_loop(model, batches_fn, steps, lr, dev, wd=0.01, warm_frac=0.05, log=None):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    warm = max(1, int(steps * warm_frac))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, steps, warm))
    model.train()
    it = batches_fn()
    losses = []
    for s in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = batches_fn()
            x, y = next(it)
        loss = model(input_ids=x.to(dev), labels=y.to(dev)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item() if s % 50 == 0 or s == steps - 1 else None)
    return [x for x in losses if x is not None]


def quiz_eval(model, tok, rows, dev):
    prompts = [r["messages"][-2]["content"] + "\n" for r in rows]
    outs = [
        o.split("\n")[0] for o in generate(model, tok, prompts, max_new_tokens=40, batch_size=128)
    ]
    return score(rows, outs)


def score(rows, outs):
    by = {}
    for r, o in zip(rows, outs):
        by.setdefault(r["task"], []).append(normalize(o) == normalize(r["messages"][-1]["content"]))
    allv = [x for v in by.values() for x in v]
    return {
        "em": round(sum(allv) / len(allv), 3),
        **{k: round(sum(v) / len(v), 2) for k, v in sorted(by.items())},
    }


def chat_eval(model, tok, rows):
    prompts = [r["messages"][:-1] for r in rows]
    return score(rows, generate(model, tok, prompts, max_new_tokens=40, batch_size=128))


def fact_recall(model, tok, towns):
    from ftlearn.evaluation import FACT_PROBES

    P, A = [], []
    for t in towns:
        for a, p in FACT_PROBES.items():
            P.append(p.format(town=t["town"]))
            A.append(t[a])
    outs = generate(model, tok, P, max_new_tokens=4, batch_size=256)
    return round(
        sum(normalize(o).split()[:1] == normalize(a).split()[:1] for o, a in zip(outs, A)) / len(A),
        3,
    )


def run(cfg):
    t0 = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    random.seed(0)
    w = WorldConfig(**cfg.get("world", {}))
    world = build_world(w)
    chat_texts = [m["content"] for r in world["instructions_train"] for m in r["messages"]]
    tok = T.train_tokenizer(world["corpus"] + chat_texts)
    eot = tok.bos_token_id
    docs = tok(world["corpus"], add_special_tokens=False)["input_ids"]
    stream = [i for d in docs for i in d + [eot]]
    L, B = cfg.get("block", 128), cfg.get("batch", 32)
    nblk = len(stream) // L
    blocks = torch.tensor(stream[: nblk * L]).view(nblk, L)
    steps = int(cfg["tokens"] / (L * B))
    g = torch.Generator().manual_seed(0)

    def pre_batches():
        perm = torch.randperm(nblk, generator=g)
        for i in range(0, nblk - B + 1, B):
            x = blocks[perm[i : i + B]]
            yield x, x

    torch.manual_seed(cfg.get("seed", 0))
    g.manual_seed(cfg.get("seed", 0))
    hidden, layers = cfg.get("hidden", 256), cfg.get("layers", 4)
    conf = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,
        num_hidden_layers=layers,
        num_attention_heads=cfg.get("heads", 4),
        num_key_value_heads=cfg.get("heads", 4),
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(cfg.get("seed", 0))
    model = LlamaForCausalLM(conf).to(dev)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.bos_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    pl = train_loop(model, pre_batches, steps, cfg.get("lr", 3e-3), dev)
    towns = [t | {} for t in world["towns"]]
    res = {
        "name": cfg["name"],
        "cfg": cfg,
        "vocab": len(tok),
        "stream_tokens": len(stream),
        "pre_steps": steps,
        "epochs": round(steps * L * B / len(stream), 1),
        "params": sum(p.numel() for p in model.parameters()),
        "pre_loss": [round(x, 3) for x in pl[-3:]],
    }
    test, ho = world["instructions_test"], world["heldout"]
    res["base_recall_train"] = fact_recall(model, tok, [t for t in towns if not t["heldout"]][:80])
    res["base_recall_ho"] = fact_recall(model, tok, [t for t in towns if t["heldout"]])
    res["base_quiz_test"] = quiz_eval(model, tok, test, dev)
    res["base_quiz_ho"] = quiz_eval(model, tok, ho, dev)
    res["base_chat_test"] = chat_eval(model, tok, test)["em"]
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    # SFT variants
    train = world["instructions_train"]

    def encode(r):
        full = tok.apply_chat_template(r["messages"], tokenize=False)
        prompt = tok.apply_chat_template(
            r["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        ids = tok(full, add_special_tokens=False)["input_ids"]
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        return ids, [-100] * n + ids[n:]

    enc = [encode(r) for r in train]
    res["sft_tokens_per_epoch"] = sum(len(i) for i, _ in enc)
    res["sft"] = []
    for sft in cfg.get("sfts", [{"lr": 5e-4, "epochs": 2, "batch": 32}]):
        model.load_state_dict(base_state)
        sb = sft.get("batch", 32)
        gs = torch.Generator().manual_seed(1)

        def sft_batches(gs=gs, sb=sb):
            perm = torch.randperm(len(enc), generator=gs).tolist()
            for i in range(0, len(perm) - sb + 1, sb):
                items = [enc[j] for j in perm[i : i + sb]]
                m = max(len(a) for a, _ in items)
                x = torch.tensor([a + [tok.pad_token_id] * (m - len(a)) for a, _ in items])
                y = torch.tensor([b + [-100] * (m - len(b)) for _, b in items])
                yield x, y

        ssteps = int(sft["epochs"] * (len(enc) // sb))
        sl = train_loop(model, sft_batches, ssteps, sft["lr"], dev, wd=0.0)
        r = {
            "sft": sft,
            "steps": ssteps,
            "loss": round(sl[-1], 3),
            "test": chat_eval(model, tok, test),
            "ho": chat_eval(model, tok, ho),
            "recall_ho": fact_recall(model, tok, [t for t in towns if t["heldout"]]),
        }
        res["sft"].append(r)
    res["seconds"] = round(time.time() - t0)
    return res


OUT = None


def work(c):
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    try:
        r = run(c)
    except Exception:
        import traceback

        r = {"name": c["name"], "error": traceback.format_exc()[-2000:]}
    with open(os.environ["SWEEP_OUT"], "a") as f:
        f.write(json.dumps(r) + "\n")
    print(json.dumps(r)[:600], flush=True)
    return r


if __name__ == "__main__":
    cfgs = json.load(open(sys.argv[1]))
    os.environ["SWEEP_OUT"] = sys.argv[2]
    only = sys.argv[3:]
    import multiprocessing as mp

    cfgs = [c for c in cfgs if not only or c["name"] in only]
    nproc = int(os.environ.get("NPROC", "1"))
    if nproc == 1:
        for c in cfgs:
            work(c)
    else:
        with mp.get_context("spawn").Pool(nproc) as p:
            list(p.imap_unordered(work, cfgs))
