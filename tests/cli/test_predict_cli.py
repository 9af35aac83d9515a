"""`bbu predict CKPT IMAGES...` through Typer's runner, on an untrained checkpoint and raw photos of
examples/raw (one EXIF-rotated): the predictions JSONL (file or stdout), the renders, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bbucli.chat.loading import load_processor
from bbucli.chat.prompts import Prompts
from bbucli.cli.app import app
from bbucli.evaluation import read_ground_truth
from bbucli.evaluation.predictions import parse_predictions_jsonl
from bbucli.loss.multitask import build_caption_vocab
from bbucli.model.bbu_model import BBUModel
from bbucli.model.checkpoint import save_checkpoint
from bbucli.model.loading import load_model

runner = CliRunner()
RAW = Path(__file__).resolve().parents[2] / "examples" / "raw"
UPRIGHT = RAW / "QC-20230221-0002857_21408.jpeg"
ROTATED = RAW / "QC-20230223-0002865_21610.jpeg"  # EXIF orientation 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    processor = load_processor("tiny", max_pixels=48 * 28 * 28)
    torch.manual_seed(0)
    vocab = build_caption_vocab(processor.tokenizer, ["screw/install/ok", "label/sticker/ok"])
    model = BBUModel.from_qwen(load_model("tiny"), caption_vocab=vocab, width=64, layers=1, heads=4, ffn=128, caption_max_len=6)
    prompts = Prompts(system="Find every object.", instruction="Detect.")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", model, processor, prompts=prompts)


def invoke(*args: object):
    return runner.invoke(app, ["predict", *map(str, args)], env={"COLUMNS": "200"})


def test_writes_jsonl_and_renders(checkpoint, tmp_path):
    preds, renders = tmp_path / "preds.jsonl", tmp_path / "renders"
    result = invoke(checkpoint, UPRIGHT, ROTATED, "--out", preds, "--render", renders, "--top-k", 7, "--batch-size", 2)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [line["image"] for line in lines] == [str(UPRIGHT), str(ROTATED)]
    for line in lines:
        assert (line["width"], line["height"]) == (1440, 1920) and line["source"] == "head"
        assert len(line["objects"]) == 7 and not line["unparseable"]
        for obj in line["objects"]:
            x1, y1, x2, y2 = obj["bbox_2d"]
            assert 0 <= x1 < x2 <= 1440 and 0 <= y1 < y2 <= 1920 and 0 < obj["score"] < 1 and obj["desc"]
    # the file reads back as predictions, without problems
    assert parse_predictions_jsonl(preds.read_text().split("\n")).problems == ()
    pictures = sorted(renders.iterdir())
    assert {p.name for p in pictures} == {f"{ROTATED.stem}.jpg", f"{UPRIGHT.stem}.jpg"}
    for picture in pictures:
        with Image.open(picture) as image:
            assert image.size == (1440, 1920)  # upright, original size
    assert "bbu predict (head)" in result.output and "written" in result.output


def test_lm_to_stdout_counts_unparseable_answers(checkpoint):
    result = invoke(checkpoint, UPRIGHT, "--source", "lm", "--max-new-tokens", 4, "--threshold", -100)
    assert result.exit_code == 0, result.output
    [line] = [json.loads(text) for text in result.stdout.splitlines() if text.startswith("{")]
    assert line["source"] == "lm" and isinstance(line["raw"], str) and isinstance(line["unparseable"], bool)
    assert "answer" in result.output


def test_a_jsonl_of_ground_truth_keys_scores_with_bbu_eval(checkpoint, tmp_path):
    """Predictions keyed like a ground truth's images can be scored afterwards."""
    gt = tmp_path / "gt.jsonl"
    gt.write_text(json.dumps({"student": {"images": [str(UPRIGHT)], "objects": [{"bbox_2d": [10, 10, 300, 300], "desc": "screw/install/ok"}]}}) + "\n")
    preds = tmp_path / "p.jsonl"
    assert invoke(checkpoint, UPRIGHT, "--out", preds).exit_code == 0
    assert read_ground_truth(gt).images[0].key == str(UPRIGHT)
    scored = runner.invoke(app, ["eval", str(preds), "--data", str(gt), "--backend", "pycocotools", "--json", "--overlays", "0", "--out", str(tmp_path / "e")])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["counts"]["prediction_records"] == 1


def test_bad_arguments(checkpoint, tmp_path):
    assert invoke(checkpoint, tmp_path / "missing.jpeg").exit_code == 2
    assert invoke(checkpoint, UPRIGHT, "--source", "both").exit_code == 2
    (tmp_path / "empty").mkdir()
    result = invoke(tmp_path / "empty", UPRIGHT)
    assert result.exit_code == 1
    assert "error:" in result.output and "is not a checkpoint" in result.output


def test_help_shows_examples():
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "bbu predict runs/tiny/checkpoint-100" in result.output


def bad_images(folder: Path) -> list[Path]:
    """A text file named .jpg, a truncated JPEG and a 6000x20 image (an aspect ratio over 200)."""
    text = folder / "notes.jpg"
    text.write_text("not an image\n")
    truncated = folder / "truncated.jpeg"
    truncated.write_bytes(UPRIGHT.read_bytes()[: UPRIGHT.stat().st_size // 3])
    thin = folder / "thin.png"
    Image.new("RGB", (6000, 20), "gray").save(thin)
    return [text, truncated, thin]


def test_bad_images_are_reported_and_the_rest_written(checkpoint, tmp_path):
    bad = bad_images(tmp_path)
    preds, renders = tmp_path / "preds.jsonl", tmp_path / "renders"
    args = [bad[0], UPRIGHT, bad[1], ROTATED, bad[2], "--out", preds, "--render", renders, "--batch-size", 2]
    result = invoke(checkpoint, *args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, result.output
    for path, line, why in zip(bad, errors, ("cannot identify image", "truncated", "aspect ratio"), strict=True):
        assert line.startswith(f"error: {path}:") and why in line, line
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [line["image"] for line in lines] == [str(UPRIGHT), str(ROTATED)]
    assert {p.name for p in renders.iterdir()} == {f"{UPRIGHT.stem}.jpg", f"{ROTATED.stem}.jpg"}


def test_bad_images_alone_to_stdout(checkpoint, tmp_path):
    [text, *_] = bad_images(tmp_path)
    result = invoke(checkpoint, text, UPRIGHT)
    assert result.exit_code == 1, result.output
    [line] = [json.loads(text) for text in result.stdout.splitlines() if text.startswith("{")]
    assert line["image"] == str(UPRIGHT)
    assert sum(line.startswith("error:") for line in result.output.splitlines()) == 1


@pytest.mark.parametrize("option", ["--out", "--render"])
def test_an_unwritable_output_is_refused_before_predicting(checkpoint, tmp_path, option):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder\n")
    target = blocker / "out"
    result = invoke(checkpoint, UPRIGHT, option, target)
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert str(target) in line and "predicting" not in result.output
    assert blocker.read_text() == "a file, not a folder\n"
