"""A fine-tuned model as ONNX, run by onnxruntime (10_deployment), and its dynamic int8 quantization.

`torch.onnx.export(..., dynamo=True)` traces one forward pass, `input_ids` and `attention_mask` to
logits, with the batch and sequence lengths left free. No KV cache is exported: the greedy loop here
recomputes the whole sequence each step, which is what the export can be checked against exactly
(`model.generate(use_cache=False)`). onnxruntime's `quantize_dynamic` stores the weights of every
MatMul in int8 and quantizes the activations on the fly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


class LogitsOnly(torch.nn.Module):
    """The model's forward pass as the export sees it: token ids and mask in, logits out, no cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_onnx(model, example: dict, path: str | Path) -> Path:
    """Export `model` to ONNX at `path`, traced on `example` (a tokenizer's batch), batch and length free."""
    import logging
    import warnings

    from torch.export import Dim

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, length = Dim("batch"), Dim("sequence", max=model.config.max_position_embeddings)
    axes = {0: batch, 1: length}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not installed"
    with warnings.catch_warnings():  # the exporter's notices (pytree renames) concern no model here
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            LogitsOnly(model.eval()), (example["input_ids"], example["attention_mask"]),
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_shapes={"input_ids": axes, "attention_mask": axes}, dynamo=True, verbose=False,
        )
    program.save(str(path))
    return path


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session over `path` (threads: torch's count by default)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file; export it first with ftlearn.onnx_export.export_onnx.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for a truncated or foreign file
        raise ValueError(f"{path} could not be loaded as ONNX ({type(err).__name__}: {str(err)[:200]}); "
                         "it may be truncated: export it again.") from err


def logits(sess, batch: dict) -> np.ndarray:
    """The session's logits for a tokenizer's batch (numpy int64 in, float32 out)."""
    feed = {k: np.asarray(batch[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
    return sess.run(["logits"], feed)[0]


def generate(sess, tokenizer, prompts: Sequence[list[dict]], stop: Sequence[int], max_new_tokens: int = 32,
             batch_size: int = 64) -> list[str]:
    """Greedy answers to chat prompts through the ONNX model: left-padded batches, the whole sequence each step."""
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="np", padding=True, padding_side="left", add_special_tokens=False)
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        new = np.zeros((len(texts), 0), dtype=np.int64)
        done = np.zeros(len(texts), dtype=bool)
        for _ in range(max_new_tokens):
            step = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0][:, -1].argmax(-1)
            step = np.where(done, tokenizer.pad_token_id, step)
            new = np.concatenate([new, step[:, None]], axis=1)
            ids = np.concatenate([ids, step[:, None]], axis=1)
            mask = np.concatenate([mask, (~done)[:, None].astype(np.int64)], axis=1)
            done |= np.isin(step, list(stop))
            if done.all():
                break
        for row in new:
            kept = [int(t) for t in row]
            cut = next((i for i, t in enumerate(kept) if t in stop), len(kept))
            out.append(tokenizer.decode(kept[:cut], skip_special_tokens=True))
    return out


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime's dynamic quantization: int8 weights for every MatMul, activations quantized per call."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process first: measured, it changes only the size
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def speed(sess, batch: dict, new_tokens: int = 8) -> dict[str, float]:
    """Prompt tokens/s (one run over the batch) and generated tokens/s (greedy steps, no cache), as deploy.speed."""
    import time

    ids, mask = (np.asarray(batch[k], dtype=np.int64) for k in ("input_ids", "attention_mask"))
    start = time.perf_counter()
    sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens - 1):  # each step recomputes the whole sequence: no KV cache in this export
        step = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0][:, -1].argmax(-1)[:, None]
        ids, mask = np.concatenate([ids, step], axis=1), np.concatenate([mask, np.ones_like(step)], axis=1)
    decode = time.perf_counter() - start
    return {"prompt tokens/s": int(mask[:, : batch["input_ids"].shape[1]].sum()) / prefill,
            "generated tokens/s": ids.shape[0] * (new_tokens - 1) / decode, "prompt share of time": prefill / (prefill + decode)}
