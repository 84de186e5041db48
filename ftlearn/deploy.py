"""Taking a fine-tuned model out of the notebook (10_deployment): merge, save it whole, and prove it.

Every step here is checked the same way: load the result back and compare it with what went in,
by logits (`logit_gap`) and by the answers it generates. `save_complete` writes what a runtime needs
besides the weights (tokenizer, chat template, and a `generation_config` that names every stop
token), and `answers_in_fresh_process` reloads the folder in a new Python, as a server would.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .compat import keep_4bit_layout
from .evaluation import stop_ids

NEEDED = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "chat_template.jinja")  # what transformers, llama.cpp's converter and `transformers serve` read


def chat_batch(tokenizer, prompts: Sequence[list[dict]]) -> dict[str, torch.Tensor]:
    """Chat prompts as one left-padded batch, ready for generation (the template adds the assistant turn)."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


@torch.no_grad()
def logit_gap(a, b, batch: dict) -> float:
    """The largest |logit difference| between two models over the batch's real (unpadded) positions."""
    mask = batch["attention_mask"].bool()
    la = a(**batch).logits.float() if callable(a) else torch.as_tensor(a)
    lb = b(**batch).logits.float() if callable(b) else torch.as_tensor(b)
    return float((la - lb).abs()[mask].max())


def merged(peft_model):
    """peft's `merge_and_unload`: W + s·BA folded into each layer, the adapter modules gone.

    On a 4-bit model peft builds new Linear4bit layers (re-quantized): they get the same one
    4-bit path on every CPU as `models.load` gives (`compat.keep_4bit_layout`).
    """
    model = peft_model.merge_and_unload()
    keep_4bit_layout(model)
    return model


def load_adapter(model, folder: str | Path, name: str = "default"):
    """A saved LoRA adapter on `model` (peft), with a clear error when the adapter was trained on another base."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json; save the adapter there with model.save_pretrained.")
    trained_on = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    try:
        if hasattr(model, "peft_config"):
            model.load_adapter(str(folder), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(folder), adapter_name=name)
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        first = next(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
        base = repr(trained_on) if trained_on else "a base its adapter_config.json does not name"
        raise ValueError(f"the adapter in {folder} was trained on {base}, whose shapes differ from this model "
                         f"({model.config.name_or_path!r}): {first}. Load the base it was trained on.") from None


def switch_ms(peft_model, names: Sequence[str], repeats: int = 50) -> float:
    """Median milliseconds of one `set_adapter` between loaded adapters (no weights move, a pointer does)."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        peft_model.set_adapter(names[i % len(names)])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def save_complete(model, tokenizer, folder: str | Path) -> list[str]:
    """Weights, config, tokenizer, chat template and a generation_config naming every stop token, in one folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.generation_config
    config.eos_token_id = stop_ids(tokenizer)  # the end of a turn as well as of a document: a runtime stops at either
    config.pad_token_id = tokenizer.pad_token_id
    config.do_sample = False  # the course's answers are greedy; a server's request can still ask for sampling
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    missing = [f for f in NEEDED if not (folder / f).is_file()]
    if missing:
        raise RuntimeError(f"{folder} lacks {', '.join(missing)} after saving: this tokenizer or model saves less "
                           "than a runtime needs (a chat template? safetensors?).")
    return sorted(p.name for p in folder.iterdir())


FRESH = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompts, new = sys.argv[1], json.loads(sys.stdin.read()), int(sys.argv[2])
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
out = []
for p in prompts:  # one at a time: no padding, only what the folder says (chat template, stop tokens)
    ids = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=new)
    out.append(gen[0, ids["input_ids"].shape[1]:].tolist())
print(json.dumps(out))
"""


def answers_in_fresh_process(folder: str | Path, prompts: Sequence[list[dict]], max_new_tokens: int = 32) -> list[list[int]]:
    """Token ids a new Python generates from the saved folder alone, with its own defaults (greedy, its stop tokens)."""
    run = subprocess.run([sys.executable, "-c", FRESH, str(folder), str(max_new_tokens)], input=json.dumps(list(prompts)),
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if run.returncode:
        raise RuntimeError(f"reloading {folder} in a fresh process failed:\n{run.stderr[-1500:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


@torch.no_grad()
def answers_here(model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int = 32) -> list[list[int]]:
    """The same generation in this process (one prompt at a time, the model's generation_config)."""
    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        gen = model.generate(**ids, max_new_tokens=max_new_tokens)
        out.append(gen[0, ids["input_ids"].shape[1]:].tolist())
    return out


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` runs of fn, in seconds (the least disturbed by the rest of the machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def speed(model, batch: dict, new_tokens: int = 8, use_cache: bool = True) -> dict[str, float]:
    """Prompt tokens/s (one forward pass over the batch) and generated tokens/s (the rest of a generate)."""
    prompt_tokens = int(batch["attention_mask"].sum())
    rows = batch["input_ids"].shape[0]
    prefill = timed(lambda: model(**batch, use_cache=False))
    total = timed(lambda: model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, use_cache=use_cache), repeats=1)
    # the first new token comes out of the prefill; the other new_tokens - 1 are decoding steps
    return {"prompt tokens/s": prompt_tokens / prefill, "generated tokens/s": rows * (new_tokens - 1) / max(total - prefill, 1e-9),
            "prompt share of time": prefill / total}
