"""Shared test set-up. The libraries' deprecations are errors here (the rules: ftlearn.compat).

`tiny_config` and `tiny_llama` make the tiny random Llamas that the unit tests train, count and
compare: two layers of width 64 with grouped-query attention (k and v are 32 wide), so that in + out
differs between q, k and the MLP and a count that mixed them up would not add up. A test that
needs other widths (bitsandbytes' blocks, a logits-dominated memory balance) overrides them.
"""

import pytest

from ftlearn.compat import STRICT_WARNINGS

TINY_LLAMA = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def pytest_configure(config) -> None:
    """Add ftlearn.compat's strict warning rules to pytest's `filterwarnings`, in their order."""
    for rule in STRICT_WARNINGS:  # after pyproject's lines: a later line wins
        config.addinivalue_line("filterwarnings", rule.ini())


@pytest.fixture(scope="session")
def tiny_config():
    """A factory: `tiny_config(**overrides)` is TINY_LLAMA's LlamaConfig with those fields changed."""
    from transformers import LlamaConfig  # imported here: test files without models stay quick

    def make(**overrides) -> LlamaConfig:
        return LlamaConfig(**{**TINY_LLAMA, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_config):
    """A factory: `tiny_llama(seed=0, **overrides)`, a random LlamaForCausalLM in eval mode."""
    import torch
    from transformers import LlamaForCausalLM

    def make(seed: int = 0, **overrides) -> LlamaForCausalLM:
        torch.manual_seed(seed)  # the same weights for the same seed and shape
        return LlamaForCausalLM(tiny_config(**overrides)).eval()

    return make
