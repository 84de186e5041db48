"""Library renames absorbed in one place: TRL and transformers rename arguments often.

Every config the course builds goes through `make_config`, which maps the old names learners find
in tutorials to the current ones and refuses names the installed version does not know (with the
closest valid names), instead of silently ignoring them.

Every other version workaround lives here too: the strict warning rules the tests and notebook
kernels share (`STRICT_WARNINGS`), the checkpointing rename (`enable_checkpointing`), TRL's private
tile sizes (`trl_chunk_sizes`), the undoing of TRL's bf16 cast of QLoRA adapters, and the
4-bit codes in bitsandbytes' loaded layout after its CPU repack (`loaded_4bit_codes`), and the
switch that keeps that repack from happening (`keep_4bit_layout`), and the addresses of the
CPU allocations torch.profiler saw, which only its private event tree has (`allocation_events`).
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import inspect
import os
import warnings
from dataclasses import dataclass

# old name -> current name (transformers 5 / TRL 1.x)
RENAMES = {
    "evaluation_strategy": "eval_strategy",  # transformers 4.41
    "max_seq_length": "max_length",  # TRL 0.20
    "no_cuda": "use_cpu",  # transformers 4.32
    "warmup_ratio": "warmup_steps",  # transformers 5: a float below 1 is a ratio
    "tokenizer": "processing_class",  # transformers 4.46 / TRL 0.12 (Trainer argument)
    "dataset_text_field_name": "dataset_text_field",
    "overwrite_output_dir": None,  # removed in transformers 5: output dirs are reused as they are
}


# name the course uses -> the newer name, used silently where the installed version has it
NEWER = {
    "gradient_checkpointing": "activation_checkpointing",  # transformers 5.2x; the old name warns until v6
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def make_config(cls, **kwargs):
    """Build `cls(**kwargs)` (SFTConfig, TrainingArguments, ...) after mapping renamed arguments."""
    params = inspect.signature(cls.__init__).parameters
    accepted = set(params) - {"self"}
    fixed = {}
    for old, new in NEWER.items():  # TRL 1.16's SFTConfig defaults gradient_checkpointing=True,
        default = params[old].default if old in params else None  # and that default warns too
        if new in accepted and default not in (None, inspect.Parameter.empty):
            if old not in kwargs and new not in kwargs:
                fixed[new] = default
    for key, value in kwargs.items():
        if NEWER.get(key) in accepted:
            fixed[NEWER[key]] = value
            continue
        new = RENAMES.get(key, key) if key not in accepted else key
        if new is None:
            warnings.warn(f"{cls.__name__}: '{key}' no longer exists and is ignored.", stacklevel=2)
            continue
        if new not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3)
            raise TypeError(f"{cls.__name__} has no argument '{key}'. Did you mean {close}?")
        if new != key:
            warnings.warn(f"{cls.__name__}: '{key}' is now '{new}'.", stacklevel=2)
        fixed[new] = value
    return cls(**fixed)


# ---------------------------------------------------------------------------------------------
# Strict warnings: a library's deprecation fails the tests before it fails a learner
# ---------------------------------------------------------------------------------------------

STRICT_ENV = "FTLEARN_STRICT_WARNINGS"  # set to 1 (the Makefile's TEST_ENV): notebooks run strict

# Python attributes a warning to the module `stacklevel` frames up: the library itself (transformers
# and peft mostly warn with stacklevel 1) or its caller (TRL uses 2 or 3): ftlearn, a test module
# (`test_*`, no package), a notebook cell (`__main__`), or torch's nn.Module call, through which
# transformers' renamed `forward` arguments warn. `module` is a regex that Python matches at the
# start of the name only, so `(\.|$)` keeps `trl` from matching `trlx` while `trl.trainer` matches.
STRICT_MODULES = (
    r"(transformers|trl|peft|accelerate|ftlearn|__main__|test_\w+|torch\.nn\.modules\.module)(\.|$)"
)


@dataclass(frozen=True)
class WarningRule:
    """One warnings filter: pytest's ini syntax and `warnings.filterwarnings` read the same fields."""

    action: str  # "error" or "ignore"
    category: str  # a built-in warning class, by name (pytest's ini syntax names it)
    module: str = ""  # regex, matched at the start of the module the warning is attributed to
    message: str = ""  # regex, matched at the start of the message, case-insensitively
    reason: str = ""  # why; an ignore names the library and version that warns, and why not fixed
    hides: str = ""  # an ignore's deprecated name, which ftlearn and the notebooks must not use

    def ini(self) -> str:
        """The rule as one `filterwarnings` line of pytest's configuration."""
        return f"{self.action}:{self.message}:{self.category}:{self.module}"


ANNOUNCED = "a library announced a rename or removal: follow it here, in ftlearn.compat"
STRICT_WARNINGS: tuple[WarningRule, ...] = (
    WarningRule("error", "FutureWarning", STRICT_MODULES, reason=ANNOUNCED),
    WarningRule("error", "DeprecationWarning", STRICT_MODULES, reason=ANNOUNCED),
    # Ignores come after the errors: a later rule wins, in pytest's list as in `strict_warnings()`.
    # Each is a library's notice that no caller can act on, mostly one library calling another's
    # old name; `hides` is that name, which the course must not use itself (test_compat.py checks).
    WarningRule(
        "ignore",
        "FutureWarning",
        r"transformers\.modeling_utils",
        "`is_gradient_checkpointing` is deprecated",
        reason="peft 0.21.2 (every get_peft_model) and TRL 1.16 read the old name; transformers "
        "5.23-5.24 deprecate it for is_activation_checkpointing, to be removed in v6",
        hides="is_gradient_checkpointing",
    ),
    WarningRule(
        "ignore",
        "FutureWarning",
        r"transformers\.modeling_utils",
        "`gradient_checkpointing_enable` is deprecated",
        reason="peft 0.21.2's prepare_model_for_kbit_training(use_gradient_checkpointing=True) "
        "calls the old name; transformers 5.24 renames it activation_checkpointing_enable (v6 "
        "removes it); the course itself calls compat.enable_checkpointing",
        hides="gradient_checkpointing_enable",
    ),
    # transformers 5.24 renames `past_key_values` to `cache`; peft 0.21.2's prefix tuning still
    # passes the old name. Its forward pass is right (the test compares it with 5.23's), its generate
    # is not: the course decodes such models with compat.greedy_by_forward, and a strict xfail in
    # test_compat.py fails the day peft's generate is right again.
    WarningRule(
        "ignore",
        "FutureWarning",
        message=r"(`past_key_values` is deprecated|Both `past_key_values` and `cache` are set)",
        reason="peft 0.21.2's prefix tuning passes past_key_values, which transformers 5.24 "
        "deprecates for `cache` (removed in 5.40); nothing a caller can change",
        hides="past_key_values",
    ),
    WarningRule(
        "ignore",
        "UserWarning",
        r"peft\.peft_model",
        "Position ids are not supported",
        reason="peft 0.21.2's prompt tuning drops the position_ids that transformers' generate "
        "passes (its virtual tokens shift every position): right, and nothing a caller can change",
    ),
)


def strict_warnings(rules: tuple[WarningRule, ...] = STRICT_WARNINGS, report: bool = False) -> None:
    """Turn the libraries' FutureWarning and DeprecationWarning into errors, as the tests do.

    `report=True` shows every one of them instead ("always"), to list them all in one run.
    """
    for rule in rules:  # each call goes in front of the last, so the last rule wins, as in pytest
        action = "always" if report and rule.action == "error" else rule.action
        warnings.filterwarnings(action, rule.message, getattr(builtins, rule.category), rule.module)


def apply_warning_rules() -> str:
    """The rules for a notebook kernel (profiles.setup calls this); returns the mode applied.

    Always: the ignores (library notices no caller can act on), so no notebook filters warnings
    itself. With FTLEARN_STRICT_WARNINGS=1 (the tests): every rule, deprecations raise;
    FTLEARN_STRICT_WARNINGS=report: every rule, deprecations shown each time, to list them all.
    """
    value = os.environ.get(STRICT_ENV, "")
    if value in ("", "0"):
        strict_warnings(tuple(r for r in STRICT_WARNINGS if r.action == "ignore"))
        return "ignores"
    strict_warnings(report=value == "report")
    return "report" if value == "report" else "strict"


def enable_checkpointing(model, kwargs: dict | None = None) -> None:
    """Turn on gradient checkpointing (non-reentrant by default) under the installed name.

    transformers 5.2x renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`;
    the old name warns until v6, and older versions have only it.
    """
    kwargs = {"use_reentrant": False} if kwargs is None else kwargs
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# ---------------------------------------------------------------------------------------------
# Private values and behaviours of TRL the course relies on
# ---------------------------------------------------------------------------------------------

TRL_CHUNKS = (4096, 32768)  # TRL 1.16's (tokens, vocabulary entries), if its private names move


def read_trl_chunks() -> tuple[int, int] | None:
    """TRL's own (tokens, vocabulary entries) per tile of its fused LM head; None if they moved."""
    try:  # TRL 1.16: one public constant, one private
        from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE
    except ImportError:
        return None
    return TOKEN_CHUNK_SIZE, _CHUNKED_LOGPROB_CHUNK_SIZE


def trl_chunk_sizes() -> tuple[int, int]:
    """(tokens, vocabulary entries) per tile of TRL's fused LM head: the installed TRL's, or 1.16's."""
    return read_trl_chunks() or TRL_CHUNKS


SFT_FUSED_OUTPUTS = ("log_probs", "entropy", "is_top1")  # what TRL 1.16's SFTTrainer asks for


def add_trl_fused_lm_head(model, outputs: tuple[str, ...] = SFT_FUSED_OUTPUTS) -> None:
    """Give `model` TRL's fused, chunked LM head, as SFTTrainer does (`fused_lm_head=True` then).

    `trl.trainer.utils.add_fused_lm_head` is an internal of TRL 1.x (not exported by `trl`); the
    memory measurements and the speed benchmark use it to compute the loss exactly as SFTTrainer.
    """
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    add_fused_lm_head(base, outputs=outputs)


def remove_trl_forward_patch(model) -> int:
    """Restore the class's own `forward` on every module TRL's fused LM head patched; returns how many.

    `add_fused_lm_head` (SFTTrainer does it) sets `module.forward` on the instance, a wrapper that
    calls the forward it replaced through a closure. A deep copy of the model keeps that closure, so
    the copy's forward runs the *original* module: a merged copy would silently compute with the
    unmerged adapters (07 measured "merged" latency equal to the adapter's, and a logit difference
    of exactly 0). After training, and on every copy, the patch has no use (the wrapper calls the
    plain forward unless `fused_lm_head=True`), so it is removed.
    """
    removed = 0
    for module in model.modules():
        patched = module.__dict__.get("forward")
        code = getattr(getattr(patched, "__func__", None), "__code__", None)  # functools.wraps renames it, not its code
        if code is not None and code.co_name == "_fused_forward":
            del module.forward
            removed += 1
    return removed


def undo_trl_adapter_cast(model, dtype) -> int:
    """Cast `model`'s trainable tensors back to `dtype`; returns how many were cast.

    TRL's SFTTrainer (1.x) casts a quantized model's LoRA weights to bf16, as the QLoRA paper
    trained them. A profile that computes in fp32 (a CPU) keeps them in fp32, like LoRA's.
    """
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)
            cast += 1
    return cast


# ---------------------------------------------------------------------------------------------
# peft 0.21.2's generate under transformers 5.24: the learned prompt is lost
# ---------------------------------------------------------------------------------------------


def prompt_learning(model) -> bool:
    """True for a peft prompt- or prefix-tuning model, whose `generate` peft 0.21.2 gets wrong.

    Under transformers 5.24 (its new `cache` argument), peft 0.21.2's generate drops the learned
    prompt after the first step: greedy tokens differ from the model's own forward pass
    (tests/test_compat.py measures it; under 5.23 the two agreed to 1e-7).
    """
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def greedy_by_forward(
    model, input_ids, attention_mask, max_new_tokens: int, stop_ids: list[int], pad_id: int
):
    """Greedy decoding by whole forward passes (no cache): what `generate` must return, slower."""
    import torch

    seq, mask = input_ids, attention_mask
    done = torch.zeros(len(seq), dtype=torch.bool, device=seq.device)
    stops = torch.tensor(stop_ids, device=seq.device)
    for _ in range(max_new_tokens):
        nxt = model(input_ids=seq, attention_mask=mask).logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)  # finished rows only pad
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
        done |= torch.isin(nxt, stops)
        if done.all():
            break
    return seq


# Where TRL keeps each preference trainer: DPO, reward modelling, GRPO and RLOO are in `trl`; ORPO,
# CPO and KTO moved to `trl.experimental.<name>` in TRL 1.x (their configs beside them).
PREFERENCE_TRAINERS = {
    "dpo": ("trl", "DPOTrainer", "DPOConfig"),
    "reward": ("trl", "RewardTrainer", "RewardConfig"),
    "grpo": ("trl", "GRPOTrainer", "GRPOConfig"),
    "rloo": ("trl", "RLOOTrainer", "RLOOConfig"),
    "orpo": ("trl.experimental.orpo", "ORPOTrainer", "ORPOConfig"),
    "cpo": ("trl.experimental.cpo", "CPOTrainer", "CPOConfig"),
    "kto": ("trl.experimental.kto", "KTOTrainer", "KTOConfig"),
}


def preference_trainer(name: str) -> tuple[type, type]:
    """(Trainer, Config) classes of TRL's preference method `name` ("dpo", "orpo", "kto", ...),
    from `trl` or, where TRL 1.x moved them, `trl.experimental`."""
    import importlib

    if name not in PREFERENCE_TRAINERS:
        raise ValueError(f"unknown preference method {name!r}: one of {', '.join(PREFERENCE_TRAINERS)}")
    module_name, trainer, config = PREFERENCE_TRAINERS[name]
    for candidate in (module_name, "trl", "trl.experimental"):
        try:
            module = importlib.import_module(candidate)
            return getattr(module, trainer), getattr(module, config)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"TRL has no {trainer}: this ftlearn knows TRL 1.16's layout; see ftlearn/compat.py")


# ---------------------------------------------------------------------------------------------
# bitsandbytes 0.50's CPU repack of 4-bit weights (CPUs with AVX-512 BF16)
# ---------------------------------------------------------------------------------------------


def loaded_4bit_codes(param):
    """A 4-bit weight's bytes in the layout bitsandbytes loaded them in, whatever it did since.

    On a CPU with AVX-512 BF16, bitsandbytes 0.50 repacks a Linear4bit the first time it runs in
    inference (eval mode, no gradients): codes reordered into an [out, in/2] matrix, the double
    quantization undone (05_quantization, section 6). The codes are the same; this undoes the
    reordering on a copy (bitsandbytes' own private inverse), so that comparing bytes before and
    after training (06) compares codes, not layouts. Any other tensor comes back as it is.
    """
    import copy

    state = getattr(param, "quant_state", None)
    if not getattr(state, "packing_format_for_cpu", False):
        return param.detach()
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    codes, _ = _convert_weight_packed_for_cpu_inverse(param.detach().clone(), copy.copy(state))
    return codes


@contextlib.contextmanager
def quiet_gguf_loading():
    """Hide transformers' "Converting and de-quantizing GGUF tensors" bar (10_deployment loads six files).

    transformers 5 draws it with `tqdm.auto` and no switch (`disable_progress_bar()` does not reach
    it; in a notebook it is a widget, so redirecting stderr does not either): its module's `tqdm`
    is swapped for a disabled one while the block runs.
    """
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def keep_4bit_layout(model) -> int:
    """Turn off bitsandbytes' CPU repack in every Linear4bit of `model`, undoing any already done.

    On a CPU with AVX-512 BF16, bitsandbytes 0.50 repacks a Linear4bit at its first inference (eval
    mode, no gradients) for a bf16 kernel, `gemv_4bit`. Answers then come from bf16 arithmetic on
    such a CPU and from fp32 on any other (10_deployment's "as trained" logits moved by 0.5), and
    the repacked layer has no autograd: training it afterwards drops the gradient through the base
    (torch only warns). With the switch off every CPU runs the path training uses: dequantize, then
    matmul in the compute dtype. `models.load` calls this; returns how many layers it set.
    """
    n = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        n += 1
    return n


def allocation_events(prof) -> list[tuple[int, int, int]]:
    """(time ns, address, bytes) of every tensor allocation (bytes > 0) and free a stopped profiler saw.

    The addresses are only in torch's private event tree (`torch._C._profiler`), not in
    `kineto_results.events()`; the tree nests allocations under the ops that made them.
    """
    from torch._C._profiler import _EventType

    found, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            found.append((event.start_time_ns, fields.ptr, fields.alloc_size))
        stack.extend(event.children)
    return found
