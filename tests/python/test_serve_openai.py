"""The official `openai` Python package talks to `jarip serve`: chat, streaming, completions,
models, errors, and a load test of 32 concurrent streaming clients.

Needs: `pip install -r tests/python/requirements.txt` and JARIP_BIN (see scripts/test).
"""

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from serve_helpers import Server, tiny_model

NAME = "jarip-tiny"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(model):
    with Server(model, "--served-model-name", NAME, "--max-batch", "16") as s:
        yield s


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME


def test_chat_and_streaming_agree(client):
    messages = [{"role": "system", "content": "You are jarip."}, {"role": "user", "content": "대한민국의 주권은?"}]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=12, seed=3, temperature=0.9)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = client.chat.completions.create(
        model=NAME,
        messages=messages,
        max_tokens=12,
        seed=3,
        temperature=0.9,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == r.choices[0].message.content
    assert finish == r.choices[0].finish_reason
    assert usage.completion_tokens == r.usage.completion_tokens


def test_sampling_parameters_and_logprobs(client):
    r = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "hello"}],
        max_completion_tokens=5,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.3,
        frequency_penalty=0.3,
        stop=["\n\n"],
        n=3,
        seed=11,
        logprobs=True,
        top_logprobs=2,
        extra_body={"top_k": 20, "min_p": 0.05},
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        for t in c.logprobs.content:
            assert t.logprob <= 0 and len(t.top_logprobs) == 2


def test_completions(client):
    r = client.completions.create(model=NAME, prompt="대한민국은", max_tokens=6, seed=1, logprobs=1)
    assert r.object == "text_completion"
    assert isinstance(r.choices[0].text, str)
    assert r.usage.completion_tokens <= 6
    texts = []
    for chunk in client.completions.create(model=NAME, prompt="대한민국은", max_tokens=6, seed=1, stream=True):
        texts.extend(c.text for c in chunk.choices)
    assert "".join(texts) == r.choices[0].text


def test_errors(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "x"}], temperature=-1)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="힣" * 1100)
    assert e.value.code == "context_length_exceeded" and "1024 tokens" in e.value.message


def test_api_key(model):
    with Server(model, "--api-key", "s3cret") as s:
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.models.list().data[0].id == model.name


def stream_tokens(client, seed, max_tokens):
    """One streamed chat request; returns its completion tokens."""
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": f"이야기 {seed}"}],
        max_tokens=max_tokens,
        seed=seed,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
    return usage.completion_tokens


def test_load_32_concurrent_streaming_clients(client, capsys):
    max_tokens = 16
    t = time.perf_counter()
    single = sum(stream_tokens(client, s, max_tokens) for s in range(5))
    single_tps = single / (time.perf_counter() - t)

    errors = []

    def one_client(i):
        tokens = 0
        for j in range(5):
            try:
                tokens += stream_tokens(client, 100 * i + j, max_tokens)
            except openai.APIStatusError as e:  # any 4xx/5xx: counted, and fails the test
                errors.append(e.status_code)
        return tokens

    t = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        total = sum(pool.map(one_client, range(32)))
    elapsed = time.perf_counter() - t
    assert not errors, f"statuses: {errors}"
    assert total == 32 * 5 * max_tokens
    figures = {
        "single_client_tokens_per_s": round(single_tps, 1),
        "clients": 32,
        "requests": 160,
        "aggregate_tokens_per_s": round(total / elapsed, 1),
        "requests_per_s": round(160 / elapsed, 2),
    }
    with capsys.disabled():
        print(f"\nload test (tiny model, debug build): {json.dumps(figures)}")
    out = Path(os.environ.get("CARGO_TARGET_DIR", Path(__file__).resolve().parents[2] / "target"))
    if out.is_dir():
        (out / "serve-load-test.json").write_text(json.dumps(figures) + "\n")
    # No ratio is asserted: with this tiny model on a debug build the Python clients, not the
    # server, set the pace (bench/serve measures the server with a real model).


def test_graceful_shutdown_finishes_a_stream(model):
    s = Server(model)
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
    stream = c.completions.create(
        model=model.name,
        prompt=[5, 6],
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    next(chunks)  # the generation is under way
    done = threading.Event()
    threading.Thread(target=lambda: (s.stop(), done.set()), daemon=True).start()
    usage = [ch.usage for ch in chunks if ch.usage]
    assert done.wait(30) and s.proc.returncode == 0
    assert usage and usage[-1].completion_tokens == 200, "the stream in flight ran to its end"
