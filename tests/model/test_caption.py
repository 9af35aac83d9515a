"""The compact caption vocabulary and the caption decoder: mapping, saving, teacher forcing,
greedy decoding (KV cache == full recomputation) and stopping at EOS."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bbucli.errors import ModelError
from bbucli.model.caption_decoder import CaptionDecoder
from bbucli.model.caption_vocab import BOS, EOS, N_SPECIAL, PAD, UNK, CaptionVocab

pytestmark = pytest.mark.usefixtures("one_thread")


DESCS = [[151, 9, 77], [9, 9, 4000], [77, 151644]]


def test_vocab_maps_qwen_ids_both_ways():
    vocab = CaptionVocab.build(DESCS)
    assert vocab.size == N_SPECIAL + 5
    assert vocab.qwen_ids == (9, 77, 151, 4000, 151644)
    for desc in DESCS:
        compact = vocab.encode(desc)
        assert all(N_SPECIAL <= c < vocab.size for c in compact)
        assert vocab.decode(compact) == desc
    # Unseen ids become UNK and decode to nothing; decoding stops at EOS and skips specials.
    assert vocab.encode([9, 12345]) == [vocab.encode([9])[0], UNK]
    assert vocab.decode([BOS, 4, UNK, 5, EOS, 6, PAD]) == [9, 77]
    assert vocab.decode(torch.tensor([5, 4])) == [77, 9]


def test_vocab_saves_and_loads_through_json():
    vocab = CaptionVocab.build(DESCS)
    loaded = CaptionVocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert loaded == vocab and loaded.encode([151644]) == vocab.encode([151644])


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"format": "other"},
        {"format": "bbu-caption-vocab", "version": 99},
        {"format": "bbu-caption-vocab", "version": 1, "specials": ["<pad>"], "qwen_ids": []},
        {
            "format": "bbu-caption-vocab",
            "version": 1,
            "specials": ["<pad>", "<bos>", "<eos>", "<unk>"],
            "qwen_ids": [5, 3],
        },
        {
            "format": "bbu-caption-vocab",
            "version": 1,
            "specials": ["<pad>", "<bos>", "<eos>", "<unk>"],
            "qwen_ids": ["a"],
        },
    ],
)
def test_damaged_vocab_file_is_a_model_error(data):
    with pytest.raises(ModelError):
        CaptionVocab.from_dict(data)


def test_targets_end_with_eos_and_are_cut_to_fit():
    vocab = CaptionVocab.build(DESCS)
    targets = vocab.targets([[9, 77], [9, 9, 4000, 77, 151]], max_len=4)
    assert targets.tolist() == [[4, 5, EOS, PAD], [4, 4, 7, EOS]]


def make_decoder(vocab_size=12, max_len=8) -> CaptionDecoder:
    torch.manual_seed(0)
    return CaptionDecoder(
        vocab_size, cond_width=16, width=32, layers=2, heads=4, ffn=64, max_len=max_len
    )


def test_teacher_forcing_shape_and_causality():
    decoder = make_decoder().eval()
    cond, targets = torch.randn(3, 16), torch.randint(0, 12, (3, 6))
    logits = decoder(cond, targets)
    assert logits.shape == (3, 6, 12)
    # Position t sees targets before t only.
    changed = targets.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 12
    assert torch.allclose(decoder(cond, changed)[:, :4], logits[:, :4], atol=1e-6)


def test_greedy_decoding_with_cache_equals_teacher_forced_argmax():
    decoder = make_decoder(vocab_size=30, max_len=8).eval()
    with torch.no_grad():
        decoder.out.bias[EOS] = -1e3  # no early stop: compare all 8 steps
    cond = torch.randn(5, 16)
    generated = decoder.generate(cond)
    logits = decoder(cond, generated)
    logits[..., [PAD, BOS]] = float("-inf")
    assert torch.equal(logits.argmax(-1), generated)


def test_learns_captions_and_greedy_stops_at_eos():
    vocab = CaptionVocab.build(DESCS)
    decoder = make_decoder(vocab_size=vocab.size, max_len=6)
    cond = torch.randn(3, 16)
    targets = vocab.targets(DESCS, max_len=6)
    opt = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(60):
        loss = F.cross_entropy(
            decoder(cond, targets).flatten(0, 1), targets.flatten(), ignore_index=PAD
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    generated = decoder.eval().generate(cond)
    assert torch.equal(generated, targets)  # caption, EOS, then PAD to max_len
    assert [vocab.decode(row) for row in generated] == DESCS
