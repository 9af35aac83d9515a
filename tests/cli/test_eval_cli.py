"""`bbu eval PREDICTIONS --data GT` and `bbu eval CKPT` through Typer's runner: exit codes 0/1/2,
tables, --json, problems by line, a checkpoint evaluated end to end on a converted split, --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbucli.cli.app import app
from bbucli.convert.pipeline import ConvertOptions, convert_dataset

RAW = Path(__file__).resolve().parents[2] / "examples" / "raw"
#: Five raw photos (one EXIF-rotated), enough for a teacher pool and a val split of two.
STEMS = (
    "QC-20230221-0002857_21408",
    "QC-20230223-0002865_21610",
    "QC-20230221-0002864_21461",
    "QC-20230221-0002864_21508",
    "QC-20230224-0002895_21881",
)

runner = CliRunner()
A = "screw/bbu_install_screw/correct"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    student = {"images": ["images/a.jpeg"], "objects": [{"bbox_2d": [10, 10, 40, 40], "desc": A}]}
    gt = tmp_path / "val.jsonl"
    gt.write_text(json.dumps({"teachers": [], "student": student}) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join([
        json.dumps({"image": "images/a.jpeg", "objects": [{"bbox_2d": [10, 10, 40, 40], "desc": A, "score": 0.9}]}),
        "not json at all",
        json.dumps({"image": "images/ghost.jpeg", "objects": []}),
    ]) + "\n")
    return gt, preds


def invoke(*args: object):
    return runner.invoke(app, ["eval", *map(str, args)], env={"COLUMNS": "160"})


def test_scores_and_prints_tables(files, tmp_path):
    gt, preds = files
    result = invoke(preds, "--data", gt, "--backend", "pycocotools", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    for text in ("AP / AP50 / AP75", "1.000 / 1.000 / 1.000", "per class", A, "defect escape rate", "pycocotools",
                 "preds.jsonl:2", "invalid JSON", "preds.jsonl:3", "ghost.jpeg", "metrics.json"):
        assert text in result.output, text
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_json_prints_metrics_only(files, tmp_path):
    gt, preds = files
    result = invoke(preds, "--data", gt, "--backend", "pycocotools", "--json", "--threshold", "0.5", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["coco"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["operating_point"]["threshold"] == 0.5 and metrics["operating_point"]["chosen_by"] == "given"
    assert any(p.startswith(f"{preds}:2: invalid JSON") for p in metrics["problems"])


def test_default_out_is_eval_beside_predictions(files):
    gt, preds = files
    assert invoke(preds, "--data", gt, "--backend", "pycocotools").exit_code == 0
    assert (preds.parent / "eval" / "pr_curve.png").is_file()


def test_a_folder_that_is_no_checkpoint_exits_1(files, tmp_path):
    gt, _ = files
    result = invoke(tmp_path, "--data", gt)
    assert result.exit_code == 1
    assert "is not a checkpoint" in result.output and "bbu train" in result.output


def test_checkpoint_options_are_refused_for_a_predictions_file(files):
    gt, preds = files
    result = invoke(preds, "--data", gt, "--source", "lm", "--teachers", "1")
    assert result.exit_code == 2
    assert "--source, --teachers apply to a checkpoint folder" in result.output


def test_unusable_ground_truth_exits_1(files, tmp_path):
    _, preds = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{broken\n")
    result = invoke(preds, "--data", bad)
    assert result.exit_code == 1
    assert "error:" in result.output and "no usable episode" in result.output


def test_missing_files_and_bad_options_exit_2(files, tmp_path):
    gt, preds = files
    assert invoke(tmp_path / "nope.jsonl", "--data", gt).exit_code == 2
    result = invoke(preds)
    assert result.exit_code == 2 and "needs --data" in result.output
    assert invoke(preds, "--data", gt, "--backend", "tensorflow").exit_code == 2


def blocked(tmp_path: Path) -> tuple[Path, Path]:
    """(a regular file, a path under it): no one, root included, can create that folder."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder\n")
    return blocker, blocker / "out"


def test_an_unwritable_out_is_refused_before_scoring(files, tmp_path):
    gt, preds = files
    blocker, out = blocked(tmp_path)
    result = invoke(preds, "--data", gt, "--backend", "pycocotools", "--out", out)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert str(out) in line and "AP / AP50" not in result.output
    assert blocker.read_text() == "a file, not a folder\n"


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("config.yaml", "data:\n  train: a.jsonl\n  val: b.jsonl\n", "config.yaml:1: invalid JSON"),
        ("empty.jsonl", "", "no predictions record could be read"),
        ("other.jsonl", json.dumps({"image": "images/elsewhere.jpeg", "objects": []}) + "\n", "none of its 1 record(s) names an image"),
        ("coco.json", json.dumps([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]), "no predictions record"),
    ],
)
def test_predictions_matching_no_image_exit_1_and_write_nothing(files, tmp_path, name, text, why):
    gt, _ = files
    folder = tmp_path / "run"
    folder.mkdir()
    preds = folder / name
    preds.write_text(text)
    result = invoke(preds, "--data", gt, "--backend", "pycocotools")
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert str(preds) in line, line
    assert why in result.output.replace("\n", " "), result.output
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no eval/ folder


def test_help_shows_examples():
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    assert "bbu eval runs/preds.jsonl --data" in result.output and "--threshold" in result.output


# ---- bbu eval CKPT -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, val JSONL): five raw photos converted small, and an untrained checkpoint whose
    config.yaml names the val split (as a training run's would)."""
    import torch

    from bbucli.chat.loading import load_processor
    from bbucli.chat.prompts import Prompts
    from bbucli.loss.multitask import build_caption_vocab
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.checkpoint import save_checkpoint
    from bbucli.model.loading import load_model
    from bbucli.schema import Sample, read_episodes
    from bbucli.teachers import inference_teachers

    raw = tmp_path_factory.mktemp("raw")
    for stem in STEMS:
        for ext in (".jpeg", ".json"):
            (raw / f"{stem}{ext}").symlink_to(RAW / f"{stem}{ext}")
    train = tmp_path_factory.mktemp("data") / "bbu.jsonl"
    convert_dataset(raw, train, ConvertOptions(val_ratio=0.5, pool=1, max_pixels=48 * 28 * 28))
    val = train.with_name("bbu.val.jsonl")
    processor = load_processor("tiny", max_pixels=48 * 28 * 28)
    torch.manual_seed(0)
    vocab = build_caption_vocab(processor.tokenizer, ["挡风板/安装", "BBU品牌/华为"])
    model = BBUModel.from_qwen(load_model("tiny"), caption_vocab=vocab, width=64, layers=1, heads=4, ffn=128, caption_max_len=6)
    config = f"data:\n  train: {train}\n  val: {val}\n  lang: zh\n  num_teachers: 1\n"
    prompts = Prompts(system="Find every object.", instruction="Detect.")
    # The inference teachers a training run on this split saves: one of the pool.
    pool = [e.student for e in read_episodes(train.with_name("bbu.teachers.jsonl"))]
    teachers = [Sample((str(train.parent / t.image),), t.objects) for t in inference_teachers(pool, 1)]
    path = save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint-1", model, processor, config_yaml=config, prompts=prompts, teachers=teachers)
    return path, val


def test_checkpoint_both_sources_on_the_configured_val_split(checkpoint):
    ckpt, val = checkpoint
    result = invoke(ckpt, "--source", "both", "--max-new-tokens", "4", "--backend", "pycocotools", "--overlays", "1")
    assert result.exit_code == 0, result.output
    images = len(val.read_text().splitlines())
    assert images == 2
    for source in ("head", "lm"):
        folder = ckpt / "eval" / source
        for name in (
            "metrics.json",
            "predictions.jsonl",
            "results_coco.json",
            "gt_coco.json",
            "per_class.csv",
            "confusion.csv",
            "pr_curve.png",
            "inference.json",
        ):
            assert (folder / name).is_file(), (source, name)
        assert len(list((folder / "overlays").glob("01_*.png"))) == 1
        metrics = json.loads((folder / "metrics.json").read_text())
        lines = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(lines) == images and {line["source"] for line in lines} == {source}
        assert metrics["counts"]["images"] == images and metrics["counts"]["prediction_records"] == images
        assert metrics["counts"]["unparseable"] == sum(line["unparseable"] for line in lines)
        info = json.loads((folder / "inference.json").read_text())
        assert info["teachers"] == 1 and info["data"] == str(val) and info["source"] == source
        if source == "lm":
            assert all("raw" in line for line in lines)
    for text in ("bbu eval: head", "bbu eval: lm", "unparseable answers", "teachers 1", "AP / AP50 / AP75"):
        assert text in result.output, text


def test_checkpoint_with_explicit_data_json_and_no_teachers(checkpoint, tmp_path):
    ckpt, val = checkpoint
    out = tmp_path / "out"
    result = invoke(ckpt, "--data", val, "--out", out, "--teachers", "0", "--backend", "pycocotools", "--json", "--overlays", "0", "--hypotheses", "2")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["counts"]["images"] == 2 and metrics["counts"]["predictions"] > 0
    assert (out / "metrics.json").is_file() and (out / "predictions.jsonl").is_file()
    info = json.loads((out / "inference.json").read_text())
    assert info["teachers"] == 0 and info["hypotheses"] == 2
    # Both classes the caption vocabulary spells label every query: two boxes per query.
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for line in lines:
        descs = [o["desc"] for o in line["objects"]]
        assert set(descs) == {"挡风板/安装", "BBU品牌/华为"} and descs.count("挡风板/安装") == len(descs) / 2


def test_checkpoint_on_a_split_whose_images_are_elsewhere_exits_1(checkpoint, tmp_path):
    """A copy of the split away from its images/ folder: scoring would count every object as
    missed (AP 0); the error names the split, the count and the first image instead."""
    ckpt, val = checkpoint
    moved = tmp_path / "val.jsonl"
    moved.write_text(val.read_text())
    out = tmp_path / "out"
    result = invoke(ckpt, "--data", moved, "--out", out, "--teachers", "0")
    assert result.exit_code == 1, result.output
    first = json.loads(val.read_text().splitlines()[0])["student"]["images"][0]
    assert f"{moved}: 2 of 2 images not found or unreadable" in result.output
    assert first in result.output
    assert not (out / "metrics.json").exists()


def test_checkpoint_with_an_unwritable_out_is_refused_before_loading(checkpoint, tmp_path):
    ckpt, val = checkpoint
    blocker, out = blocked(tmp_path)
    result = invoke(ckpt, "--data", val, "--out", out, "--teachers", "0")
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert str(out) in line and blocker.is_file()
