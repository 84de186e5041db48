"""10_deployment's exports, each loaded back and compared: GGUF, ONNX, the complete folder, the server."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlearn import deploy, gguf_export, onnx_export, serving
from ftlearn.evaluation import generate, prompts_and_answers, stop_ids
from ftlearn.paths import MODELS_DIR
from ftlearn.world import load_split

INSTRUCT = MODELS_DIR / "tiny-instruct"


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(INSTRUCT).eval(), AutoTokenizer.from_pretrained(INSTRUCT)


@pytest.fixture(scope="module")
def prompts():
    return prompts_and_answers(load_split("instructions_test")[::40])[0]  # 9 questions of every task


def test_permutation_is_the_one_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(8 * 64 * 3, dtype=np.float32).reshape(8 * 64, 3)  # 8 heads of 64 rows
    permuted = gguf_export.permute(w, 8)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(LlamaTensorProcessor()._reverse_permute_weights(permuted, 8, 8), w)


def test_gguf_f32_round_trip_is_exact(pair, prompts, tmp_path):
    model, tok = pair
    path = gguf_export.write_gguf(model, tok, tmp_path / "m.f32.gguf", "F32")
    back, back_tok = gguf_export.load_gguf(path)
    batch = deploy.chat_batch(tok, prompts)
    assert deploy.logit_gap(model, back, batch) < 1e-5
    assert back_tok.chat_template == tok.chat_template and back_tok.eos_token_id == tok.eos_token_id
    described = gguf_export.describe(path)
    assert "output.weight" not in {n for n, _, _ in described["tensors"]}, "tied embeddings are written once"
    assert len(described["tensors"]) == 2 + 9 * model.config.num_hidden_layers


def test_gguf_quantized_types_hold_their_bits(pair, tmp_path):
    from gguf import GGUFReader

    model, tok = pair
    expected = {"F16": 16, "Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0}  # per weight, scales included (blocks of 32)
    for kind, bits in expected.items():
        path = gguf_export.write_gguf(model, tok, tmp_path / f"m.{kind}.gguf", kind)
        t = next(t for t in GGUFReader(str(path)).tensors if t.name == "blk.0.ffn_down.weight")
        assert 8 * int(t.n_bytes) / int(t.n_elements) == bits, kind
        norm = next(t for t in GGUFReader(str(path)).tensors if t.name == "blk.0.attn_norm.weight")
        assert norm.tensor_type.name == "F32", "norms stay F32"


def test_gguf_errors_name_the_file_and_the_fix(pair, tmp_path):
    model, tok = pair
    with pytest.raises(ValueError, match="quantizes F32, F16"):
        gguf_export.write_gguf(model, tok, tmp_path / "x.gguf", "Q4_K")
    with pytest.raises(FileNotFoundError, match="write it first"):
        gguf_export.load_gguf(tmp_path / "missing.gguf")
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_export.load_gguf(tmp_path / "not.gguf")
    path = gguf_export.write_gguf(model, tok, tmp_path / "full.gguf", "Q8_0")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "cut.gguf").write_bytes(path.read_bytes()[:4096])
    with pytest.raises(ValueError, match="truncated"):
        gguf_export.load_gguf(tmp_path / "cut" / "cut.gguf")


def test_tokenizer_gap_finds_the_contractions(pair, tmp_path):
    model, tok = pair
    _, back = gguf_export.load_gguf(gguf_export.write_gguf(model, tok, tmp_path / "m.gguf", "Q8_0"))
    gap = gguf_export.tokenizer_gap(tok, back, ["Where is Ashby?", "The emblem of Varholt is the badger."])
    assert gap["alike"] == 2 and gap["stress alike"] < gap["stress texts"], gap
    assert gguf_export.tokenizer_gap(tok, tok, ["x"])["stress alike"] == gap["stress texts"]


def test_complete_folder_stops_in_a_fresh_process(pair, prompts, tmp_path):
    model, tok = pair
    files = deploy.save_complete(model, tok, tmp_path / "saved")
    assert set(deploy.NEEDED) <= set(files)
    fresh = deploy.answers_in_fresh_process(tmp_path / "saved", prompts[:4], max_new_tokens=32)
    assert fresh == deploy.answers_here(model, tok, prompts[:4], max_new_tokens=32)
    assert all(ids[-1] in stop_ids(tok) and len(ids) < 32 for ids in fresh), "every answer ends at a stop token"


def test_merge_equals_the_adapter_and_a_foreign_adapter_is_named(pair, prompts, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tok = pair
    torch.manual_seed(0)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(INSTRUCT), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in adapter.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # B = 0 would make the merge trivially exact
    batch = deploy.chat_batch(tok, prompts)
    with torch.no_grad():
        before = adapter(**batch).logits
    assert (before - model(**batch).logits).abs().max() > 1e-2, "the adapter changes the model"
    assert deploy.logit_gap(before, deploy.merged(adapter), batch) < 1e-4
    other = LlamaConfig(vocab_size=model.config.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=2)
    get_peft_model(LlamaForCausalLM(other), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="shapes differ.*Load the base it was trained on"):
        deploy.load_adapter(AutoModelForCausalLM.from_pretrained(INSTRUCT), tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        deploy.load_adapter(model, tmp_path)


def test_onnx_export_answers_as_pytorch(pair, prompts, tmp_path):
    model, tok = pair
    batch = deploy.chat_batch(tok, prompts)
    path = onnx_export.export_onnx(model, batch, tmp_path / "m.onnx")
    sess = onnx_export.session(path)
    with torch.no_grad():
        ref = model(**batch).logits
    assert deploy.logit_gap(ref, onnx_export.logits(sess, batch), batch) < 1e-4
    ours = [a.strip() for a in onnx_export.generate(sess, tok, prompts, stop_ids(tok), max_new_tokens=24)]
    assert ours == generate(model, tok, prompts, max_new_tokens=24), "the ONNX greedy loop = PyTorch's generate"
    int8 = onnx_export.session(onnx_export.quantize_int8(path, tmp_path / "m.int8.onnx"))
    assert (tmp_path / "m.int8.onnx").stat().st_size < path.stat().st_size / 3
    assert 1e-4 < deploy.logit_gap(ref, onnx_export.logits(int8, batch), batch) < 5, "int8 rounds, a little"
    with pytest.raises(FileNotFoundError, match="export it first"):
        onnx_export.session(tmp_path / "missing.onnx")
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:4096])
    with pytest.raises(ValueError, match="truncated"):
        onnx_export.session(tmp_path / "cut.onnx")


def test_server_answers_then_is_gone(pair, prompts, tmp_path):
    from openai import OpenAI

    model, tok = pair
    deploy.save_complete(model, tok, tmp_path / "saved")
    with serving.Server(tmp_path / "saved") as server:
        client = OpenAI(base_url=server.url, api_key="none", max_retries=0)
        name = server.models()[0]
        said = [serving.ask(client, name, p).strip() for p in prompts[:3]]
        port, proc = server.port, server.proc
    assert said == generate(model, tok, prompts[:3], max_new_tokens=32), "greedy over the API = greedy here"
    assert proc.poll() is not None and not serving.listening(port), "nothing left running"


def test_server_errors_say_what_to_do(pair, tmp_path):
    model, tok = pair
    deploy.save_complete(model, tok, tmp_path / "saved")
    with socket.socket() as busy:
        busy.bind((serving.HOST, serving.free_port()))
        busy.listen()
        with pytest.raises(OSError, match="already in use"):
            serving.Server(tmp_path / "saved", port=busy.getsockname()[1])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        serving.Server(tmp_path)
    server = serving.Server(tmp_path / "saved")
    with pytest.raises(TimeoutError, match="no /health in 0 s"):
        server.start(timeout=0.3)
    assert not server.running, "a server that did not come up is stopped"
