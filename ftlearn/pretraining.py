"""Pre-training a foundation model: the causal-LM objective on plain text, packed into blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from ftlearn.compat import make_config


def tiny_llama_config(
    vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4, **overrides
) -> LlamaConfig:
    """The tiny-base architecture: a Llama of a few million parameters (SmolLM2's layout, shrunk).

    Any LlamaConfig field in `overrides` wins (e.g. hidden_size=64 for a test-sized model).
    """
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,  # ~8/3 x hidden, as in Llama
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,  # SmolLM2 ties them too; saves vocab x hidden parameters
    )
    return LlamaConfig(**(fields | overrides))


def pack(texts: list[str], tokenizer, block_size: int = 256) -> Dataset:
    """Tokenize `texts`, join them with an end-of-text token and cut the stream into equal blocks."""
    eot = tokenizer.bos_token_id  # <|endoftext|> separates documents
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:
        stream += ids + [eot]
    n = len(stream) // block_size
    # The tail shorter than one block is dropped; report it so nothing disappears unseen.
    blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n)]
    ds = Dataset.from_dict({"input_ids": blocks})
    ds.info.description = f"{len(stream)} tokens -> {n} blocks of {block_size}; {len(stream) - n * block_size} tail tokens dropped"
    return ds


def causal_lm_collator(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Stack packed blocks into a batch whose labels are the inputs themselves.

    The model shifts labels by one inside (next-token loss). Packed blocks have no padding, so no
    attention mask is passed: without one, attention takes its fast causal path (~1.5x faster
    on CPU than with an all-ones mask, which DataCollatorForLanguageModeling would add).
    """
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "labels": ids.clone()}


@dataclass
class PretrainSettings:
    """Knobs of a pre-training run."""

    output_dir: str = "runs/pretrain"
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup: float = 0.05
    logging_steps: int = 10
    seed: int = 0


def pretrain(model, tokenizer, blocks: Dataset, settings: PretrainSettings, callbacks=None) -> dict:
    """Train `model` with the causal-LM objective on packed `blocks` (transformers' Trainer)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    s = settings
    args = make_config(
        TrainingArguments,
        output_dir=s.output_dir,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        warmup_steps=s.warmup,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=s.logging_steps,
        save_strategy="no",
        report_to="none",  # building the embedded models: never tracked
        seed=s.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=blocks,
        data_collator=causal_lm_collator,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the logs stay in the history (and in LiveLossPlot)
    result = trainer.train()
    return {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "seconds": result.metrics.get("train_runtime"),
        "history": trainer.state.log_history,
    }


def new_tiny_model(tokenizer, seed: int = 0, **config_overrides) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama sized to `tokenizer`."""
    torch.manual_seed(seed)
    config = tiny_llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_overrides,
    )
    return LlamaForCausalLM(config)
