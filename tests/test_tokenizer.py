"""The course tokenizer: lossless round trip, chat template exactly as documented, loss mask."""

import pytest
from transformers import AutoTokenizer

from ftlearn.paths import MODELS_DIR
from ftlearn.tokenizer import CHAT_TEMPLATE, END_OF_TEXT, IM_END, IM_START, train_tokenizer
from ftlearn.world import WorldConfig, build_world


@pytest.fixture(scope="module")
def tok():
    world = build_world(
        WorldConfig(
            n_towns=30,
            n_heldout=5,
            descriptions_per_town=2,
            n_general=100,
            n_general_eval=10,
            heldout_questions=10,
        )
    )
    return train_tokenizer(world["corpus"], vocab_size=600)


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Which river flows through Varholt?"},
    {"role": "assistant", "content": "Amber"},
]


@pytest.mark.parametrize(
    "text", ["Varholt lies in Lowfen.", "Ünïcödé and emoji 🚲 too", "  spaces\n\nnewlines\t"]
)
def test_round_trip_is_lossless(tok, text):
    assert tok.decode(tok(text)["input_ids"]) == text


def test_special_tokens_are_single_tokens(tok):
    for special in (END_OF_TEXT, IM_START, IM_END):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == IM_END and tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)


def test_chat_template_renders_chatml(tok):
    text = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhich river flows through Varholt?<|im_end|>\n"
        "<|im_start|>assistant\nAmber<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(MESSAGES[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_assistant_mask_covers_exactly_the_answer(tok):
    enc = tok.apply_chat_template(MESSAGES, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    answer_ids = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(answer_ids) == "Amber" + IM_END


def test_shipped_tokenizer_has_the_template():
    shipped = AutoTokenizer.from_pretrained(MODELS_DIR / "tiny-instruct")
    assert shipped.chat_template == CHAT_TEMPLATE
    assert shipped.apply_chat_template(MESSAGES, tokenize=False).startswith("<|im_start|>system")


def test_a_word_is_the_same_token_after_a_space_a_quote_or_a_newline(tok):
    """Spaces are tokens of their own: "Amber" is one token id wherever it stands."""
    amber = tok("Amber", add_special_tokens=False)["input_ids"]
    space = tok(" ", add_special_tokens=False)["input_ids"]
    assert tok(" Amber", add_special_tokens=False)["input_ids"] == space + amber
    assert amber[0] in tok('{"river": "Amber"}', add_special_tokens=False)["input_ids"]
    assert tok("\nAmber", add_special_tokens=False)["input_ids"][-len(amber) :] == amber
