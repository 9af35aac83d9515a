"""The real path on a folder shaped like a downloaded Qwen2.5-VL-3B-Instruct: the real widths
(hidden 2048, 16 heads, 2 KV heads, MLP 11008, tied 151936 x 2048 embeddings, vision 1280 wide),
one decoder layer and one vision block, random weights, `use_cache: true`, the published file
layout and parameter names (`tools/real_shape_checkpoint.py`).

What a user runs, through the CLI: `bbu convert` of examples/raw; `bbu train configs/3b.yaml` under
DeepSpeed ZeRO-2 as configured, with CPU overrides only (fp32, sdpa by "auto", small pixel limits,
two steps of one micro-batch, no intermediate checkpoint or eval); the saved `qwen/` loaded by plain
transformers; `bbu predict` and `bbu eval` on the checkpoint.

One override is not about the CPU: `optim.lrs.llm=0` freezes the language model (with it the 311M
tied embedding). Training it too under ZeRO-2 in fp32 (446M parameters: fp32 weights, ZeRO's fp32
partition copy, its 500M-element gradient bucket, gradients and Adam state) peaks at 12.3 GB of
RAM and about 90 CPU-seconds for the training process, against about 4.4 GB and 70 CPU-seconds
frozen (2 cores); on a 24 GB machine shared by several test runs the full one was killed by the
OOM killer. Frozen, the vision tower, merger, adapters and head still train under
ZeRO-2, the LM loss's gradient still runs through the LLM into the vision tower, and the tied
embedding is still saved and reloaded. `BBU_REAL_SHAPE_TRAIN_LLM=1` trains the LLM too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bbucli.cli.app import app
from tools.real_shape_checkpoint import write_real_shape_folder

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "examples" / "raw"
CONFIG = ROOT / "configs" / "3b.yaml"
#: A teacher pool of one, two train and two val photos (one EXIF-rotated).
STEMS = (
    "QC-20230221-0002857_21408",
    "QC-20230223-0002865_21610",
    "QC-20230221-0002864_21461",
    "QC-20230221-0002864_21508",
    "QC-20230224-0002895_21881",
)
MAX_PIXELS = 64 * 28 * 28  # <= 64 vision tokens per image
OBJECTS = 2  # per image: the 151936-wide lm_head over the answers is most of a step
SIZES = {"hidden": 2048, "heads": 16, "kv_heads": 2, "mlp": 11008, "vocab": 151936, "vision": 1280}
TRAIN_LLM = os.environ.get("BBU_REAL_SHAPE_TRAIN_LLM") == "1"

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Iterator[Path]:
    """The model folder (0.9 GB), removed after the module."""
    path = write_real_shape_folder(tmp_path_factory.mktemp("models") / "Qwen2.5-VL-3B-Instruct")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """bbu.jsonl, bbu.val.jsonl and bbu.teachers.jsonl of `bbu convert`, each image cut to its
    first OBJECTS objects."""
    raw = tmp_path_factory.mktemp("raw")
    for stem in STEMS:
        for ext in (".jpeg", ".json"):
            (raw / f"{stem}{ext}").symlink_to(RAW / f"{stem}{ext}")
    train = tmp_path_factory.mktemp("data") / "bbu.jsonl"
    args = ("--max-pixels", MAX_PIXELS, "--pool", 1, "--val-ratio", 0.5)
    result = invoke("convert", raw, train, *args)
    assert result.exit_code == 0, result.output
    for name in ("bbu.jsonl", "bbu.val.jsonl", "bbu.teachers.jsonl"):
        path = train.with_name(name)
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for record in records:
            for sample in (record["student"], *record["teachers"]):
                sample["objects"] = sample["objects"][:OBJECTS]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        path.write_text(text, encoding="utf-8")
    return train.parent


@pytest.fixture(scope="module")
def trained(folder, data, tmp_path_factory) -> Iterator[tuple[subprocess.CompletedProcess, Path]]:
    """(the `bbu train` process, its output folder), in a subprocess: DeepSpeed sets up a process
    group, which must not outlive the run in the test process. The run (1.8 GB of fp32 weights)
    is removed after the module."""
    out = tmp_path_factory.mktemp("runs") / "3b"
    overrides = [
        f"model.path={folder}",
        "model.dtype=fp32",
        "train.bf16=false",
        f"model.max_pixels={MAX_PIXELS}",
        f"data.train={data / 'bbu.jsonl'}",
        f"data.val={data / 'bbu.val.jsonl'}",
        f"data.teachers={data / 'bbu.teachers.jsonl'}",
        f"train.output_dir={out}",
        "train.max_steps=2",
        "train.gradient_accumulation_steps=1",
        "train.logging_steps=1",
        "train.save_strategy=no",
        "train.eval_strategy=no",
        *([] if TRAIN_LLM else ["optim.lrs.llm=0"]),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run(
        [sys.executable, "-m", "bbucli", "train", str(CONFIG), *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1800,
    )
    yield proc, out
    shutil.rmtree(out, ignore_errors=True)


def test_the_folder_is_laid_out_like_the_download(folder) -> None:
    config = json.loads((folder / "config.json").read_text())
    assert config["use_cache"] is True and config["tie_word_embeddings"] is True
    assert "text_config" not in config  # the flat transformers-4.x layout of the published file
    assert (config["num_hidden_layers"], config["vision_config"]["depth"]) == (1, 1)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.embed_tokens.weight" in index and "visual.merger.mlp.0.weight" in index
    assert "lm_head.weight" not in index  # tied, as in the published 3B files
    assert len(set(index.values())) == 2
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
        "generation_config.json",
    ):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "preprocessor_config.json").read_text())["max_pixels"] == 12845056


def test_train_3b_yaml_with_zero2_on_the_folder(trained) -> None:
    proc, out = trained
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "final checkpoint" in proc.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["deepspeed"] is not None and run["world_size"] == 1
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [log for log in logs if "loss" in log]
    assert [log["step"] for log in losses] == [1, 2]
    for log in losses:
        # The LM terms start near ln(151936) = 11.9: the real vocabulary, scored in full.
        assert 10.0 < log["teacher_lm"] < 14.0 and 10.0 < log["student_lm"] < 14.0
        assert torch.isfinite(torch.tensor(log["loss"]))
    config = (out / "final" / "config.yaml").read_text()
    assert str(CONFIG.parent / "deepspeed" / "zero2.json") in config
    # The config's pixel limits, not the downloaded folder's (12845056: up to 16384 tokens).
    processor = json.loads((out / "final" / "processor" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"longest_edge": MAX_PIXELS, "shortest_edge": 3136}


def test_plain_transformers_loads_the_saved_qwen(trained, folder) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    proc, out = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        out / "final" / "qwen", local_files_only=True, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    text, vision = saved.config.text_config, saved.config.vision_config
    shape = {
        "hidden": text.hidden_size,
        "heads": text.num_attention_heads,
        "kv_heads": text.num_key_value_heads,
        "mlp": text.intermediate_size,
        "vocab": text.vocab_size,
        "vision": vision.hidden_size,
    }
    assert shape == SIZES and text.use_cache is True
    embed = saved.model.language_model.embed_tokens.weight
    assert embed.shape == (151936, 2048) and saved.lm_head.weight.data_ptr() == embed.data_ptr()
    start = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        folder, local_files_only=True, dtype=torch.float32
    )
    before, after = start.state_dict(), saved.state_dict()
    assert before.keys() == after.keys()
    # ZeRO-2 trained the vision tower and merged the update back; a frozen LLM did not move.
    assert not torch.equal(
        before["model.visual.blocks.0.mlp.up_proj.weight"],
        after["model.visual.blocks.0.mlp.up_proj.weight"],
    )
    assert not torch.equal(
        before["model.visual.merger.mlp.0.weight"], after["model.visual.merger.mlp.0.weight"]
    )
    llm = [k for k in before if k.startswith("model.language_model.")]
    moved = [k for k in llm if not torch.equal(before[k], after[k])]
    if TRAIN_LLM:  # the tied embedding trained under ZeRO-2 comes back updated
        assert "model.language_model.embed_tokens.weight" in moved
    else:
        assert llm and moved == []


def test_predict_and_eval_on_the_checkpoint(trained, data, tmp_path) -> None:
    proc, out = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "final"
    photo = RAW / f"{STEMS[0]}.jpeg"
    preds = tmp_path / "preds.jsonl"
    result = invoke("predict", ckpt, photo, "--out", preds, "--top-k", 5)
    assert result.exit_code == 0, result.output
    [line] = [json.loads(text) for text in preds.read_text().splitlines()]
    assert line["image"] == str(photo) and (line["width"], line["height"]) == (1440, 1920)
    assert len(line["objects"]) == 5
    for obj in line["objects"]:
        x1, y1, x2, y2 = obj["bbox_2d"]
        assert (
            0 <= x1 < x2 <= 1440 and 0 <= y1 < y2 <= 1920 and 0 < obj["score"] < 1 and obj["desc"]
        )

    args = ("--source", "both", "--max-new-tokens", 4, "--backend", "pycocotools", "--overlays", 0)
    result = invoke("eval", ckpt, *args, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"head", "lm"}
    val_images = len((data / "bbu.val.jsonl").read_text().splitlines())
    for source in ("head", "lm"):
        assert -1.0 <= metrics[source]["coco"]["AP50"] <= 1.0
        written = ckpt / "eval" / source / "predictions.jsonl"
        assert len(written.read_text().splitlines()) == val_images


def test_packed_row_equals_each_sample_alone_on_the_real_widths(folder, data) -> None:
    """`model.attn: auto` on the CPU (sdpa_varlen, vision windows batched) with the real widths,
    16 query / 2 KV heads and `use_cache: true` from the folder's config: a packed row of the
    converted episodes (one teacher each) gives every sample the hidden states it gets alone."""
    from bbucli.chat.loading import load_processor
    from bbucli.chat.processor import ChatProcessor
    from bbucli.data.collators import PackedDataCollator, StandardDataCollator
    from bbucli.model.loading import load_model
    from bbucli.model.varlen_attention import ATTN_VARLEN, ATTN_WINDOWS, varlen_kwargs
    from bbucli.schema import read_episodes

    model = load_model(folder, dtype="fp32").eval()
    text, vision = model.config.text_config, model.config.vision_config
    assert (text._attn_implementation, vision._attn_implementation) == (ATTN_VARLEN, ATTN_WINDOWS)
    assert text.use_cache is True
    chat = ChatProcessor(
        load_processor(folder), system_prompt="Find objects.", instruction="Detect."
    )
    samples = [chat.process_sample(e, data) for e in read_episodes(data / "bbu.jsonl")]
    assert len(samples) >= 2 and all(s.image_grid_thw.shape[0] == 2 for s in samples)

    def hidden(batch: dict, **extra) -> torch.Tensor:
        keys = ("input_ids", "position_ids", "pixel_values", "image_grid_thw")
        with torch.no_grad():
            out = model.model(**{k: batch[k] for k in keys}, **extra)
        return out.last_hidden_state

    row = PackedDataCollator()(samples)
    packed = hidden(row, **varlen_kwargs(row["cu_seqlens"], torch.device("cpu")))[0]
    start = 0
    for sample in samples:
        single = StandardDataCollator(151643)([sample])
        alone = hidden(single, attention_mask=single["attention_mask"])[0]
        torch.testing.assert_close(packed[start : start + sample.length], alone, rtol=0, atol=1e-4)
        start += sample.length
    assert start == packed.shape[0]
