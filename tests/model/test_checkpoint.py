"""The checkpoint folder: an untrained BBUModel round-trips (outputs to 1e-6, tied embeddings kept),
qwen/ loads in plain transformers, saving is atomic and keeps foreign files, and missing or partial
folders are ModelErrors that say what is wrong."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor
from bbucli.chat.prompts import Prompts, build_prompts
from bbucli.data.collators import StandardDataCollator
from bbucli.errors import ModelError
from bbucli.loss.multitask import build_caption_vocab
from bbucli.model.bbu_model import BBUModel
from bbucli.model.checkpoint import (
    FORMAT_VERSION,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from bbucli.model.loading import load_model
from bbucli.model.trained_with import TrainedWith
from bbucli.schema import DetObject, Episode, Sample
from bbucli.taxonomy import Taxonomy, default_path

DESCS = ("screw/install/ok", "label/sticker/mismatch")
HEAD = dict(width=64, layers=2, heads=4, ffn=128, caption_max_len=8, max_queries=40, stem_width=8)
MAX_PIXELS = 64 * 28 * 28
CONFIG = "model:\n  path: tiny\ndata:\n  lang: en\n  num_teachers: 1\n"
TAXONOMY = default_path().read_text(encoding="utf-8")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny", max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def model(processor) -> BBUModel:
    torch.manual_seed(0)
    vocab = build_caption_vocab(processor.tokenizer, DESCS)
    return BBUModel.from_qwen(load_model("tiny"), caption_vocab=vocab, text_layer=1, vision_source="llm", **HEAD).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, processor) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "checkpoint-7"
    return save_checkpoint(out, model, processor, config_yaml=CONFIG, taxonomy_yaml=TAXONOMY, extra={"step": 7})


@pytest.fixture(scope="module")
def batch(tmp_path_factory, processor) -> dict:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (112, 84), "t.png": (84, 56)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    chat = ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")
    teacher = Sample(("t.png",), (DetObject((2, 2, 20, 20), DESCS[1]),))
    episodes = [
        Episode(Sample(("a.png",), (DetObject((1, 2, 30, 40), DESCS[0]),))),
        Episode(Sample(("a.png",)), teachers=(teacher,)),
    ]
    return StandardDataCollator(151643)([chat.process_sample(e, folder) for e in episodes])


def outputs(model: BBUModel, batch: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(batch)
        logits = model.qwen.lm_head(out.hidden_states)
    return {
        "logits": logits,
        "hidden": out.hidden_states,
        "obj": out.head.pred_logits,
        "boxes": out.head.pred_boxes,
        "captions": model.head.generate_captions(out.head.hidden[:, :3]),
    }


def test_layout_and_metadata(saved, model):
    names = {p.name for p in saved.iterdir()}
    assert names == {"qwen", "processor", "head.safetensors", "bbu.json", "config.yaml", "taxonomy.yaml"}
    assert (saved / "qwen" / "config.json").is_file() and list((saved / "qwen").glob("*.safetensors"))
    assert {"tokenizer.json", "preprocessor_config.json", "chat_template.json"} <= {p.name for p in (saved / "processor").iterdir()}
    meta = json.loads((saved / "bbu.json").read_text())
    assert meta["format"] == "bbu-checkpoint" and meta["format_version"] == FORMAT_VERSION
    assert meta["head_config"]["width"] == 64 and meta["head_config"]["max_queries"] == 40
    assert meta["head_config"]["stem_width"] == 8  # the pixel stem is rebuilt on load
    assert meta["text_layer"] == 1 and meta["extra"] == {"step": 7}
    assert meta["vision_source"] == "llm"
    assert meta["caption_vocab"] == model.caption_vocab.to_dict()
    assert not list(saved.parent.glob(".checkpoint-7.*"))  # no temporary or old folder left
    assert is_checkpoint(saved) and not is_checkpoint(saved / "qwen") and not is_checkpoint(saved.parent / "nope")


@pytest.fixture(scope="module")
def loaded(saved):
    return load_checkpoint(saved)


def test_round_trip_gives_the_same_outputs(loaded, model, processor, batch):
    again = loaded.model
    assert not again.training and again.text_layer == 1 and again.caption_vocab == model.caption_vocab
    assert again.vision_source == "llm" and again.head.pixel_stem is not None
    # The tiny model ties lm_head to the embeddings; the tie must survive, not become a copy.
    qwen = again.qwen
    assert qwen.lm_head.weight.data_ptr() == qwen.model.language_model.embed_tokens.weight.data_ptr()
    before, after = outputs(model, batch), outputs(again, batch)
    for key in before:
        assert torch.allclose(before[key].float(), after[key].float(), atol=1e-6), key
    assert loaded.config_yaml == CONFIG and loaded.taxonomy_yaml == TAXONOMY and loaded.extra == {"step": 7}
    assert loaded.config["data"]["num_teachers"] == 1
    got = loaded.processor
    assert (got.min_pixels, got.max_pixels) == (processor.min_pixels, processor.max_pixels) == (3136, MAX_PIXELS)
    assert got.chat_template == processor.chat_template


def test_qwen_folder_loads_in_plain_transformers(saved, model, batch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(saved / "qwen", local_files_only=True).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")}
    with torch.no_grad():
        ours, theirs = model.qwen(**inputs, use_cache=False).logits, plain(**inputs, use_cache=False).logits
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_prompts_rebuilt_from_config_and_taxonomy_or_saved_exactly(loaded, tmp_path, model, processor):
    assert loaded.prompts() == build_prompts(Taxonomy.load().descs("en"), "en")
    exact = Prompts(system="System.", instruction="Find.")
    path = save_checkpoint(tmp_path / "exact", model, processor, prompts=exact)
    meta = json.loads((path / "bbu.json").read_text())
    assert meta["prompts"] == {"system": "System.", "instruction": "Find."}
    assert replace(loaded, meta=meta).prompts() == exact


def test_trained_with_saved_typed_or_read_from_an_old_config(loaded, tmp_path, model, processor):
    # A checkpoint without the record: the facts its config.yaml states, None for the rest.
    assert loaded.trained_with == TrainedWith(lang="en", num_teachers=1)
    assert loaded.max_tokens is None
    facts = TrainedWith(lang="en", prompt_classes=False, max_tokens=900, num_teachers=2, val=tmp_path / "val.jsonl")
    path = save_checkpoint(tmp_path / "typed", model, processor, config_yaml=CONFIG, trained_with=facts)
    meta = json.loads((path / "bbu.json").read_text())
    assert meta["trained_with"]["max_tokens"] == 900 and meta["trained_with"]["val"] == str(tmp_path / "val.jsonl")
    again = replace(loaded, meta=meta)
    assert again.trained_with == facts and again.max_tokens == 900
    assert again.prompts() == build_prompts(Taxonomy.load().descs("en"), "en", list_classes=False)


def test_replacing_keeps_foreign_files_and_swaps_atomically(tmp_path, model, processor):
    out = tmp_path / "ckpt"
    save_checkpoint(out, model, processor, extra={"step": 1})
    (out / "optimizer.pt").write_bytes(b"state")
    (out / "global_step1").mkdir()
    (out / "global_step1" / "shard.pt").write_bytes(b"zero")
    save_checkpoint(out, model, processor, extra={"step": 2})
    assert json.loads((out / "bbu.json").read_text())["extra"] == {"step": 2}
    assert (out / "optimizer.pt").read_bytes() == b"state"
    assert (out / "global_step1" / "shard.pt").read_bytes() == b"zero"
    assert not (out / "config.yaml").exists()  # owned files of the old checkpoint do not linger
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_failed_save_leaves_the_old_checkpoint(tmp_path, model, processor, monkeypatch):
    out = save_checkpoint(tmp_path / "ckpt", model, processor, extra={"step": 1})

    def broken(directory):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(processor), "save_pretrained", lambda self, d: broken(d))
    with pytest.raises(ModelError, match="cannot write checkpoint .*No space left"):
        save_checkpoint(out, model, processor, extra={"step": 2})
    assert json.loads((out / "bbu.json").read_text())["extra"] == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_unserialisable_extra_writes_nothing(tmp_path, model, processor):
    with pytest.raises(ModelError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "ckpt", model, processor, extra={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_missing_partial_and_foreign_folders_are_model_errors(tmp_path, saved):
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        load_checkpoint(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="is not a checkpoint: it lacks bbu.json, head.safetensors") as info:
        load_checkpoint(tmp_path / "empty")
    assert "written by `bbu train`" in info.value.hint

    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("bbu.json", "qwen", "processor"):
        (partial / name).symlink_to(saved / name)
    (tmp_path / ".partial.tmp-abc").mkdir()
    with pytest.raises(ModelError, match="is a partial checkpoint: it lacks head.safetensors") as info:
        load_checkpoint(partial)
    assert "interrupted" in info.value.hint


def test_damaged_metadata_and_head_are_model_errors(tmp_path, saved):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("qwen", "processor", "head.safetensors"):
        (broken / name).symlink_to(saved / name)
    meta = json.loads((saved / "bbu.json").read_text())
    (broken / "bbu.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelError, match="format version 99"):
        load_checkpoint(broken)
    (broken / "bbu.json").write_text(json.dumps({**meta, "head_config": {**meta["head_config"], "width": 32}}))
    with pytest.raises(ModelError, match="does not fit the head config"):
        load_checkpoint(broken)
    (broken / "bbu.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        load_checkpoint(broken)
