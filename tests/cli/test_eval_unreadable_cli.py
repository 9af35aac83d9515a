"""`bbu eval CKPT` on a split with a truncated JPEG (its header reads, its pixels do not decode):
the image is left out of the scoring and listed, the others are scored, exit 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbucli.cli.app import app
from bbucli.convert.pipeline import ConvertOptions, convert_dataset

RAW = Path(__file__).resolve().parents[2] / "examples" / "raw"
STEMS = (
    "QC-20230221-0002857_21408",
    "QC-20230223-0002865_21610",
    "QC-20230221-0002864_21461",
    "QC-20230221-0002864_21508",
    "QC-20230224-0002895_21881",
)
MAX_PIXELS = 48 * 28 * 28
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(untrained checkpoint, val JSONL of two images, the first one truncated to half its bytes)."""
    import torch

    from bbucli.chat.loading import load_processor
    from bbucli.chat.prompts import Prompts
    from bbucli.loss.multitask import build_caption_vocab
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.checkpoint import save_checkpoint
    from bbucli.model.loading import load_model

    raw = tmp_path_factory.mktemp("raw")
    for stem in STEMS:
        for ext in (".jpeg", ".json"):
            (raw / f"{stem}{ext}").symlink_to(RAW / f"{stem}{ext}")
    train = tmp_path_factory.mktemp("data") / "bbu.jsonl"
    convert_dataset(raw, train, ConvertOptions(val_ratio=0.5, pool=1, max_pixels=MAX_PIXELS))
    val = train.with_name("bbu.val.jsonl")
    first = train.parent / json.loads(val.read_text().splitlines()[0])["student"]["images"][0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])
    processor = load_processor("tiny", max_pixels=MAX_PIXELS)
    torch.manual_seed(0)
    vocab = build_caption_vocab(processor.tokenizer, ["挡风板/安装", "BBU品牌/华为"])
    model = BBUModel.from_qwen(
        load_model("tiny"),
        caption_vocab=vocab,
        width=64,
        layers=1,
        heads=4,
        ffn=128,
        caption_max_len=6,
    )
    config = f"data:\n  train: {train}\n  val: {val}\n  lang: zh\n  num_teachers: 1\n"
    prompts = Prompts(system="Find every object.", instruction="Detect.")
    path = save_checkpoint(
        tmp_path_factory.mktemp("run") / "checkpoint-1",
        model,
        processor,
        config_yaml=config,
        prompts=prompts,
    )
    return path, val


def test_a_truncated_image_is_left_out_and_listed(checkpoint, tmp_path):
    ckpt, val = checkpoint
    first, second = (
        json.loads(line)["student"]["images"][0] for line in val.read_text().splitlines()
    )
    out = tmp_path / "out"
    args = [
        "eval",
        str(ckpt),
        "--data",
        str(val),
        "--out",
        str(out),
        "--teachers",
        "0",
        "--backend",
        "pycocotools",
        "--overlays",
        "0",
    ]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "1 of 2 images" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["images"] == 1
    [problem] = [p for p in metrics["problems"] if p.startswith(first)]
    assert "cannot decode image" in problem and "image file is truncated" in problem
    assert problem.endswith("image not scored")
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [second]
    info = json.loads((out / "inference.json").read_text())
    assert (info["images"], info["images_predicted"], info["images_unreadable"]) == (2, 1, 1)
