"""HF `tokenizers` loads the tokenizer.json that jarip trains and encodes exactly as jarip does.

Needs: `pip install tokenizers pytest` and JARIP_BIN, the jarip command (a path, or a command
line such as "cargo run -q --release -p jarip-tokenizer --example tokenizer_cli --").
"""

import json
import os
import shlex
import subprocess
import unicodedata

import pytest

import tokenizers  # installed by .ci/run from tests/python/requirements.txt

KO = (
    "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.\n"
    "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.\n"
    "국가는 개인이 가지는 불가침의 기본적 인권을 확인하고 이를 보장할 의무를 진다.\n"
    "오늘은 날씨가 좋아서 친구와 함께 한강 공원에 산책을 갔어요. 2025년 8월 15일!\n"
)
EN = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n"
    "the slings and arrows of outrageous fortune. It's 1,234,567 miles; they're here, we'll see.\n"
    "    Indented code_like(thing) -> {x: 42}  \t tabs\n\n\n"
)
SAMPLE = (
    "한국어 토크나이저를 직접 학습합니다. 대한민국은 민주공화국이다!!\n\n"
    "It's  a   test:   12345678 won't   stop... 3.14159\r\n"
    "이모지 🙂👍🏽 와 한자 漢字, café (NFC), Ünïcödé — «quotes» ‘single’\n"
    "  leading spaces\t\ttabs    trailing   \n"
    "숫자 0123456789 와 공백      끝"
)


def jarip_cmd():
    bin_ = os.environ.get("JARIP_BIN")
    if not bin_:
        pytest.fail("JARIP_BIN is not set: run the tests through scripts/test")
    return shlex.split(bin_)


def test_hf_loads_and_encodes_identically(tmp_path):
    cmd = jarip_cmd()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((KO * 40) + (EN * 40), encoding="utf-8")
    sample_text = unicodedata.normalize("NFC", SAMPLE)
    sample = tmp_path / "sample.txt"
    sample.write_bytes(sample_text.encode("utf-8"))
    out = tmp_path / "tok"
    subprocess.run(cmd + ["tokenizer", "train", str(corpus), "--vocab-size", "700", "--out", str(out)], check=True)
    assert (out / "tokenizer.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "tokenizer"

    hf = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    ours = None
    # The sample, and the training text itself (where most merges apply).
    for path, text in [(sample, sample_text), (corpus, corpus.read_bytes().decode("utf-8"))]:
        res = subprocess.run(
            cmd + ["tokenizer", "encode", "--tokenizer", str(out), "--input", str(path), "--json"],
            check=True,
            capture_output=True,
        )
        ids = json.loads(res.stdout)["ids"]
        enc = hf.encode(text, add_special_tokens=False)
        assert enc.ids == ids, path.name
        assert hf.decode(enc.ids) == text
        ours = ours or ids
    # The tokenizer learned something: fewer tokens than bytes.
    assert len(ours) < len(sample_text.encode("utf-8")) * 0.8
    # Specials: the last seven ids, in order, known to HF as special added tokens.
    size = hf.get_vocab_size(with_added_tokens=True)
    specials = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert [hf.token_to_id(s) for s in specials] == list(range(size - 7, size))
