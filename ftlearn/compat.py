"""Library renames absorbed in one place: TRL and transformers rename arguments often.

Every config the course builds goes through `make_config`, which maps the old names learners find
in tutorials to the current ones and refuses names the installed version does not know (with the
closest valid names), instead of silently ignoring them.
"""

from __future__ import annotations

import difflib
import inspect
import warnings

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
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    fixed = {}
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
