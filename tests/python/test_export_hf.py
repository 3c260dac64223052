"""`jarip export` writes a Hugging Face layout that other tools read as jarip does.

- The weights and config.json alone define the model: a NumPy forward written from the config
  (no jarip code) gives the logits jarip computes for the same tokens.
- tokenizer_config.json's chat template, rendered with Jinja2 (as transformers does) and encoded
  by HF `tokenizers`, gives jarip's chat ids.
- The exported `modeling_jarip.py` and `configuration_jarip.py` run, as written to the export
  directory, on NumPy stand-ins for the parts of torch and transformers they use
  (numpy_torch/: every op written plainly with PyTorch's semantics, NotImplementedError for any
  other), in a subprocess that has them first on sys.path: loaded through config.json's auto_map
  as `AutoModelForCausalLM(trust_remote_code=True)` loads them, they give jarip's logits, and
  their KV-cache decoding gives jarip's greedy continuation. This runs in CI, for a ReLU² model
  and a SwiGLU model with grouped-query attention.
- With the real PyTorch and transformers installed (.ci/run installs them), the same file loads
  through `AutoModelForCausalLM(trust_remote_code=True)` and agrees too.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import numpy as np
import pytest
import tokenizers
from safetensors.numpy import load_file

from serve_helpers import jarip_cmd, run, tiny_model

PROMPT = "대한민국의 주권은 국민에게 있고 All the world"
NUMPY_TORCH = Path(__file__).resolve().parent / "numpy_torch"
# SwiGLU, grouped-query attention (4 query heads over 2 KV heads), two layers, and a rope base and
# logit cap away from the config's defaults, so that each must be read from config.json.
SWIGLU_GQA = {
    "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "mlp_hidden": 96, "mlp": "swi_glu",
    "max_seq_len": 64, "rope_base": 500.0, "logit_softcap": 5.0, "norm_eps": 1e-6,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run_dir = tiny_model(root)
    out = root / "hf"
    run("export", "--model", run_dir, "--out", out)
    return run_dir, out


@pytest.fixture(scope="module")
def exported_swiglu_gqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-swiglu")
    run_dir = tiny_model(root, SWIGLU_GQA)
    out = root / "hf"
    run("export", "--model", run_dir, "--out", out)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["mlp_type"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == ("swiglu", 4, 2)
    return run_dir, out


@pytest.fixture(scope="module")
def exported_uncapped(tmp_path_factory):
    # A jarip-family model (ReLU²) with logit_softcap 0 (no soft-cap, written as HF's null), no
    # QK-norm and a head tied to the embedding: the exported modeling code must honour all three.
    root = tmp_path_factory.mktemp("export-uncapped")
    run_dir = tiny_model(
        root,
        {**SWIGLU_GQA, "mlp": "relu2", "mlp_hidden": 128, "logit_softcap": 0.0, "qk_norm": False, "tie_embeddings": True},
    )
    out = root / "hf"
    run("export", "--model", run_dir, "--out", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["final_logit_softcapping"] is None and cfg["qk_norm"] is False and cfg["tie_word_embeddings"] is True
    return run_dir, out


def native_export(tmp_path_factory, arch, tied=False):
    # The --arch presets' shapes: SwiGLU, no soft-cap; QK-norm for qwen3 only; optionally a head
    # tied to the embedding (`tie_word_embeddings`, no lm_head tensor).
    root = tmp_path_factory.mktemp(f"export-{arch}")
    shape = {**SWIGLU_GQA, "logit_softcap": 0.0, "qk_norm": arch == "qwen3", "rope_base": 5e5, "tie_embeddings": tied}
    run_dir = tiny_model(root, shape)
    out = root / "hf"
    run("export", "--model", run_dir, "--out", out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and not (out / "modeling_jarip.py").exists()
    return run_dir, out


@pytest.fixture(scope="module")
def exported_llama(tmp_path_factory):
    return native_export(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def exported_qwen3(tmp_path_factory):
    return native_export(tmp_path_factory, "qwen3")


@pytest.fixture(scope="module")
def exported_llama_tied(tmp_path_factory):
    return native_export(tmp_path_factory, "llama", tied=True)


def jarip_json(*args):
    out = subprocess.run(jarip_cmd() + [str(a) for a in args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def numpy_logits(d, ids):
    """Logits of the last position, from config.json and model.safetensors only."""
    cfg = json.loads((d / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(d / "model.safetensors")).items()}
    h, hkv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    t = len(ids)
    inv = cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # [T, H, D]
        a, b = x[..., : hd // 2], x[..., hd // 2 :]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)

    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        hn = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (hn @ w[p + "self_attn.q_proj.weight"].T).reshape(t, h, hd)
        k = (hn @ w[p + "self_attn.k_proj.weight"].T).reshape(t, hkv, hd)
        v = (hn @ w[p + "self_attn.v_proj.weight"].T).reshape(t, hkv, hd)
        family = cfg["model_type"]
        if family == "qwen3" or (family == "jarip" and cfg.get("qk_norm", True)):
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q), rope(k)
        rep = h // hkv
        y = np.zeros((t, h, hd))
        for head in range(h):
            s = q[:, head] @ k[:, head // rep].T / np.sqrt(hd)
            s = np.where(np.tril(np.ones((t, t), dtype=bool)), s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            y[:, head] = (s / s.sum(-1, keepdims=True)) @ v[:, head // rep]
        x = x + y.reshape(t, h * hd) @ w[p + "self_attn.o_proj.weight"].T
        hn = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        up = hn @ w[p + "mlp.up_proj.weight"].T
        if family in ("llama", "qwen3") or cfg.get("mlp_type") == "swiglu":
            g = hn @ w[p + "mlp.gate_proj.weight"].T
            act = g / (1 + np.exp(-g)) * up
        else:
            act = np.maximum(up, 0) ** 2
        x = x + act @ w[p + "mlp.down_proj.weight"].T
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]  # tied: the embedding
    z = rms_norm(x[-1], w["model.norm.weight"], eps) @ head.T
    cap = cfg.get("final_logit_softcapping")
    return cap * np.tanh(z / cap) if cap else z  # null or absent: no soft-cap


def log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def prompt_ids(d, text):
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    cfg = json.loads((d / "config.json").read_text())
    return [cfg["bos_token_id"]] + tok.encode(text, add_special_tokens=False).ids


def test_numpy_forward_from_the_exported_files_matches_jarip(exported):
    _, out = exported
    ids = prompt_ids(out, PROMPT)
    got = jarip_json("generate", "--model", out, "--prompt", PROMPT, "--max-tokens", "1",
                     "--temperature", "0", "--logprobs", "5", "--raw", "--json")
    assert got["usage"]["prompt_tokens"] == len(ids)
    ref = log_softmax(numpy_logits(out, ids))
    top = got["logprobs"][0]["top"]
    assert [t for t, _ in top] == list(np.argsort(-ref, kind="stable")[:5])
    for t, lp in top:
        assert abs(lp - ref[t]) < 1e-4, (t, lp, ref[t])


def test_export_loads_in_jarip_as_the_checkpoint_does(exported):
    run_dir, out = exported
    args = ["--prompt", PROMPT, "--max-tokens", "12", "--seed", "3", "--json"]
    assert jarip_json("generate", "--model", out, *args) == jarip_json("generate", "--model", run_dir, *args)


def test_chat_template_renders_jarip_chat_ids(exported):
    _, out = exported
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    messages = [
        {"role": "system", "content": "너는 자립이야."},
        {"role": "user", "content": "헌법 제1조는?"},
        {"role": "assistant", "content": "대한민국은 민주공화국이다."},
        {"role": "user", "content": "And in English?"},
    ]
    env = jinja2.Environment()

    def raise_exception(msg):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    text = env.from_string(cfg["chat_template"]).render(messages=messages, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False).ids
    sp = {t["content"]: int(i) for i, t in cfg["added_tokens_decoder"].items()}
    want = [sp["<|bos|>"]]
    for m in messages:
        want += [sp[f"<|{m['role']}|>"]] + tok.encode(m["content"], add_special_tokens=False).ids + [sp["<|end|>"]]
    want.append(sp["<|assistant|>"])
    assert ids == want
    with pytest.raises(ValueError, match="roles"):
        env.from_string(cfg["chat_template"]).render(messages=[{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("export", ["exported", "exported_uncapped"])
def test_transformers_loads_the_export_with_its_modeling_code(export, request):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    _, out = request.getfixturevalue(export)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float64)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = prompt_ids(out, PROMPT)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(logits - numpy_logits(out, ids)).max() < 1e-6
    text = hf_tok.apply_chat_template([{"role": "user", "content": "안녕"}], add_generation_prompt=True, tokenize=False)
    chat = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert chat[0] == hf_tok.bos_token_id and chat[-1] == hf_tok.convert_tokens_to_ids("<|assistant|>")
    # Cached decoding through the exported code equals the full recomputation.
    with torch.no_grad():
        first = model(torch.tensor([ids[:-1]]), use_cache=True)
        step = model(torch.tensor([ids[-1:]]), past_key_values=first.past_key_values).logits[0, -1].numpy()
    assert np.abs(step - logits).max() < 1e-9


@pytest.mark.parametrize("export", ["exported_llama", "exported_qwen3", "exported_llama_tied"])
def test_native_families_load_in_transformers_own_classes(export, request):
    """Llama/Qwen3-shaped models export as those families: transformers' own classes (no
    trust_remote_code, no modeling file in the export) give jarip's logits and greedy tokens."""
    _, out = request.getfixturevalue(export)
    ids = prompt_ids(out, PROMPT)
    ref = numpy_logits(out, ids)
    got = jarip_json("generate", "--model", out, "--prompt", PROMPT, "--max-tokens", "8",
                     "--temperature", "0", "--raw", "--json")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    want = {"exported_llama": "LlamaForCausalLM", "exported_qwen3": "Qwen3ForCausalLM",
            "exported_llama_tied": "LlamaForCausalLM"}[export]
    assert type(model).__name__ == want
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double().numpy()
    assert np.abs(logits - ref).max() <= 1e-3 * np.abs(ref).max()
    with torch.no_grad():
        seq = model.generate(torch.tensor([ids]), max_new_tokens=len(got["tokens"]), do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert seq == got["tokens"]


def run_on_numpy_torch(out, dtype, prompt, continuation):
    """The export's own modeling code, run by numpy_torch/run_modeling.py in its own interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(NUMPY_TORCH), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(
        [sys.executable, str(NUMPY_TORCH / "run_modeling.py"), str(out), dtype],
        input=json.dumps({"prompt": prompt, "continuation": continuation}),
        capture_output=True, text=True, env=env,
    )
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert Path(res["torch"]).is_relative_to(NUMPY_TORCH)  # the stand-in ran, not a real torch
    return res


@pytest.mark.parametrize("export", ["exported", "exported_swiglu_gqa", "exported_uncapped"])
def test_exported_modeling_code_on_numpy_torch_matches_jarip(export, request):
    _, out = request.getfixturevalue(export)
    ids = prompt_ids(out, PROMPT)
    got = jarip_json("generate", "--model", out, "--prompt", PROMPT, "--max-tokens", "8",
                     "--temperature", "0", "--logprobs", "5", "--raw", "--json")
    cont = got["tokens"]
    assert got["usage"]["prompt_tokens"] == len(ids) and len(cont) > 1
    ref = numpy_logits(out, ids)
    for dtype in ("float64", "float32"):
        r = run_on_numpy_torch(out, dtype, ids, cont)
        logits = np.array(r["logits"])
        assert logits.shape == (len(ids), len(ref))
        # Logits leave the model in float32 (as jarip's); the rest runs in `dtype`.
        assert np.abs(logits[-1] - ref).max() < (1e-6 if dtype == "float64" else 1e-4), dtype
        lp = logits - logits.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        assert abs(r["loss"] + lp[np.arange(len(ids) - 1), ids[1:]].mean()) < 1e-5  # next-token loss
        # Cached decoding along jarip's greedy continuation: each step's distribution is jarip's.
        assert len(r["steps"]) == len(cont)
        for k, (step, tok, lps) in enumerate(zip(r["steps"], cont, got["logprobs"])):
            step = np.array(step)
            if dtype == "float64":  # the cache gives what recomputing the whole sequence gives
                assert np.abs(step - numpy_logits(out, ids + cont[:k])).max() < 1e-6, k
            step = log_softmax(step)
            assert lps["token"] == tok and step.max() - step[tok] < 1e-4, (k, tok)  # greedy, up to ties
            for t, lp_jarip in lps["top"]:
                assert abs(lp_jarip - step[t]) < 1e-4, (dtype, k, t, lp_jarip, step[t])
