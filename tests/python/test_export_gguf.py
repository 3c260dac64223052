"""`jarip export --format gguf` writes files that the `gguf` package (llama.cpp's own Python
reader) reads: metadata, vocabulary, merges, chat template, and tensors that dequantize to the
model's weights (exactly for f32, within half a quantization step for q8_0)."""

import json
import subprocess

import gguf
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import load_file

from serve_helpers import jarip_cmd, run, tiny_model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    run_dir = tiny_model(root)
    run("export", "--model", run_dir, "--out", root / "hf")
    for t in ("f32", "q8_0"):
        run("export", "--model", run_dir, "--out", root / f"m-{t}.gguf", "--dtype", t)
    return root


def field(r, key):
    f = r.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    return f.parts[f.data[0]][0].item()


def tensors(r):
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist()))) for t in r.tensors}


def test_metadata_and_vocabulary(exports):
    r = gguf.GGUFReader(exports / "m-q8_0.gguf")
    hf_cfg = json.loads((exports / "hf" / "config.json").read_text())
    tok_cfg = json.loads((exports / "hf" / "tokenizer_config.json").read_text())
    assert field(r, "general.architecture") == "jarip"
    assert field(r, "general.file_type") == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert field(r, "jarip.block_count") == hf_cfg["num_hidden_layers"]
    assert field(r, "jarip.embedding_length") == hf_cfg["hidden_size"]
    assert field(r, "jarip.attention.head_count_kv") == hf_cfg["num_key_value_heads"]
    assert field(r, "tokenizer.chat_template") == tok_cfg["chat_template"]
    tok = tokenizers.Tokenizer.from_file(str(exports / "hf" / "tokenizer.json"))
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == tok.get_vocab_size() == hf_cfg["vocab_size"]
    assert all(tok.id_to_token(i) == t for i, t in enumerate(tokens))
    merges = json.loads((exports / "hf" / "tokenizer.json").read_text())["model"]["merges"]
    assert field(r, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert field(r, "tokenizer.ggml.eos_token_id") == tok.token_to_id("<|end|>")


def test_tensors_dequantize_to_the_weights(exports):
    ref = load_file(str(exports / "hf" / "model.safetensors"))
    name = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
            "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
            "model.layers.0.self_attn.q_norm.weight": "blk.0.attn_q_norm.weight"}
    f32 = tensors(gguf.GGUFReader(exports / "m-f32.gguf"))
    q8 = gguf.GGUFReader(exports / "m-q8_0.gguf")
    assert len(f32) == len(ref)
    q8t = tensors(q8)
    for ours, theirs in name.items():
        np.testing.assert_array_equal(f32[theirs], ref[ours])
        w = ref[ours]
        if w.ndim == 2 and theirs != "token_embd.weight":
            assert next(t for t in q8.tensors if t.name == theirs).tensor_type == gguf.GGMLQuantizationType.Q8_0
            # Half a step of rounding, plus up to 127 × the f16 rounding of the block's scale.
            step = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert np.all(np.abs(q8t[theirs].reshape(-1, 32) - w.reshape(-1, 32)) <= step * (0.5 + 128 * 2**-11))
        else:
            np.testing.assert_array_equal(q8t[theirs], w)


# The --arch presets' shapes (SwiGLU, no soft-cap; QK-norm for qwen3 only), 64 wide so that a few
# training steps leave logits of a few units.
PRESET = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "mlp_hidden": 192, "mlp": "swi_glu",
          "max_seq_len": 64, "rope_base": 500000.0, "logit_softcap": 0.0, "norm_eps": 1e-5}


@pytest.mark.parametrize("arch,split,tied", [("llama", "llama3", False), ("qwen3", "jarip", False), ("llama", "llama3", True)])
def test_presets_run_in_llama_cpp_as_in_jarip(arch, split, tied, tmp_path):
    """A llama- or qwen3-shaped model's GGUF is llama.cpp's own graph: llama.cpp's logits for a
    prompt (given as token ids) match jarip's, and its greedy continuation is jarip's. A tokenizer
    trained with the llama3 split is llama.cpp's `llama-bpe`: it tokenizes text as jarip does."""
    llama_cpp = pytest.importorskip("llama_cpp")
    run_dir = tiny_model(tmp_path, {**PRESET, "qk_norm": arch == "qwen3", "tie_embeddings": tied}, preset=split)
    out = tmp_path / f"{arch}.gguf"
    run("export", "--model", run_dir, "--out", out)
    r = gguf.GGUFReader(out)
    assert field(r, "general.architecture") == arch
    assert field(r, "tokenizer.ggml.pre") == {"llama3": "llama-bpe", "jarip": "qwen2"}[split]
    args = ["generate", "--model", out, "--prompt", "국민 the world", "--max-tokens", "8", "--temperature", "0", "--raw",
            "--logprobs", "5", "--json"]
    got = json.loads(subprocess.run(jarip_cmd() + [str(a) for a in args], check=True, capture_output=True, text=True).stdout)
    tok = tokenizers.Tokenizer.from_file(str(run_dir / "tokenizer" / "tokenizer.json"))
    bos = tok.token_to_id("<|bos|>")
    ids = [bos] + tok.encode("국민 the world", add_special_tokens=False).ids
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    cont, worst = [], 0.0
    llm.reset()
    llm.eval(ids)
    for step in got["logprobs"]:
        z = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        lp = z - z.max() - np.log(np.exp(z - z.max()).sum())
        # jarip's five most likely tokens have llama.cpp's log-probabilities.
        worst = max(worst, max(abs(lp[t] - lp_jarip) for t, lp_jarip in step["top"]))
        nxt = int(np.argmax(z))
        cont.append(nxt)
        llm.eval([nxt])
    assert worst < 2e-3, (arch, worst)
    assert cont == got["tokens"], (arch, cont, got["tokens"])
    if split == "llama3":
        text = "대한민국의 주권은 국민에게 있고, All the world's a stage 12345 — 제7조!"
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text, add_special_tokens=False).ids
