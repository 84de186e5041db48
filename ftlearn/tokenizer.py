"""The course tokenizer: byte-level BPE trained on the synthetic world, with a ChatML chat template."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

# Plain documents end with END_OF_TEXT; chat turns are wrapped in IM_START ... IM_END (ChatML, as
# SmolLM2 and Qwen use), so the tiny models and the real ones see the same layout.
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, PAD]

# ChatML. The {% generation %} markers let transformers (return_assistant_tokens_mask) and TRL
# (assistant_only_loss=True) find the tokens the assistant wrote, the only ones that carry loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # Spaces are tokens of their own, so a word is the same token wherever it stands: "Amber" at
    # the start of an answer, after a quote in JSON, or mid-sentence. GPT-style tokenizers
    # (SmolLM2's) fold the space into the next word ("Ġ Amber" vs "Amber"); a big model learns
    # that the two are one word from billions of examples, a tiny one from our few cannot.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` as a transformers tokenizer with the course's special tokens."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=END_OF_TEXT,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save the tokenizer (tokenizer.json, config and chat template) to `path`."""
    tokenizer.save_pretrained(str(path))
