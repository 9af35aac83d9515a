"""A trained checkpoint carries its teacher examples: `bbu predict` on a photo outside any dataset
folder prepends them (the prompt shape of training), `bbu eval` uses the very same ones by default
(`--teacher-source episodes`: the JSONL's), and a checkpoint saved without them predicts alone
with one warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbucli.chat.answer import render_answer
from bbucli.cli.app import app
from bbucli.infer.checkpoint_eval import evaluate_checkpoint
from bbucli.infer.inference import Inference, pick_teachers
from bbucli.model.checkpoint import TEACHERS_DIR, checkpoint_teachers
from bbucli.schema import read_episodes
from bbucli.teachers import inference_teachers

runner = CliRunner()


@pytest.fixture(scope="module")
def moved(plain_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a copy of the final checkpoint, a photo, the val JSONL), the first two in folders that
    share nothing with the training data: the checkpoint must hold all a prediction needs."""
    _, result = plain_run
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    ckpt = elsewhere / "ckpt"
    shutil.copytree(result.final_checkpoint, ckpt)
    val = Path(json.loads((ckpt / "bbu.json").read_text())["trained_with"]["val"])
    photo = elsewhere / "photos" / "new.jpeg"
    photo.parent.mkdir()
    shutil.copyfile(val.parent / read_episodes(val)[0].student.image, photo)
    return ckpt, photo, val


def test_the_checkpoint_holds_the_pools_inference_teachers(plain_run, tiny_data):
    _, result = plain_run
    stored = checkpoint_teachers(result.final_checkpoint)
    pool = [e.student for e in read_episodes(tiny_data / "bbu.teachers.jsonl")]
    [expected] = inference_teachers(pool, 1)  # tiny.yaml: data.num_teachers 1
    assert stored is not None and len(stored) == 1
    [teacher] = stored
    assert teacher.objects == expected.objects
    assert (
        Path(teacher.image).parent == result.final_checkpoint.absolute() / TEACHERS_DIR / "images"
    )
    assert Path(teacher.image).read_bytes() == (tiny_data / expected.image).read_bytes()


@pytest.fixture(scope="module")
def inference(moved) -> Inference:
    return Inference.from_checkpoint(moved[0], device="cpu")


def test_predict_on_a_new_photo_prepends_the_checkpoints_teacher(moved, inference, tmp_path):
    ckpt, photo, _ = moved
    [teacher] = checkpoint_teachers(ckpt)
    assert inference.teachers == (teacher,) and inference.teacher_note is None
    prompt, alone = inference.prepare(photo), inference.prepare(photo, teachers=[])
    assert prompt.length > alone.length
    assert int((prompt.input_ids == inference.processor.vision_start_id).sum()) == 2
    answer = inference.tokenizer(render_answer(teacher.objects), add_special_tokens=False)
    ids, wanted = prompt.input_ids.tolist(), answer["input_ids"]
    assert any(ids[i : i + len(wanted)] == wanted for i in range(len(ids)))  # the teacher turn
    assert pick_teachers(checkpoint_teachers(ckpt), 0, ckpt) == ((), None)  # --teachers 0

    out = tmp_path / "preds.jsonl"
    shown = runner.invoke(
        app, ["predict", str(ckpt), str(photo), "--top-k", "2", "--out", str(out)]
    )
    assert shown.exit_code == 0, shown.output
    assert "teachers: 1 from the checkpoint" in shown.output and "warning" not in shown.output
    assert json.loads(out.read_text())["image"] == str(photo)
    too_many = runner.invoke(app, ["predict", str(ckpt), str(photo), "--teachers", "2"])
    assert too_many.exit_code == 2 and "stores 1 teacher example" in too_many.output


def test_eval_uses_the_teachers_predict_uses(moved, inference, tmp_path):
    ckpt, _, val = moved
    [teacher] = checkpoint_teachers(ckpt)
    [student] = read_episodes(val)  # tiny_data: one val image
    run = evaluate_checkpoint(ckpt, val, tmp_path / "eval", top_k=3, device="cpu")
    info = json.loads((tmp_path / "eval" / "inference.json").read_text())
    assert run.teacher_source == "checkpoint" and run.teachers == 1
    assert info["teacher_source"] == "checkpoint" and info["teachers_mean"] == 1
    assert info["teacher_images"] == [Path(teacher.image).relative_to(ckpt).as_posix()]
    same = inference.prepare(val.parent / student.student.image)  # what predict builds
    assert info["prompt_tokens_mean"] == same.length

    listed = evaluate_checkpoint(
        ckpt, val, tmp_path / "listed", top_k=3, device="cpu", teacher_source="episodes"
    )
    info = json.loads((tmp_path / "listed" / "inference.json").read_text())
    assert listed.teacher_source == "episodes" and info["teacher_images"] is None
    assert info["teachers_mean"] == len(student.teachers[:1])


def test_a_checkpoint_saved_without_teachers_predicts_alone_and_says_so(moved, tmp_path):
    ckpt, photo, _ = moved
    old = tmp_path / "old"
    shutil.copytree(ckpt, old)
    shutil.rmtree(old / TEACHERS_DIR)
    shown = runner.invoke(app, ["predict", str(old), str(photo), "--top-k", "2"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("warning:") == 1 and "no teacher examples" in shown.output
    assert "teachers: 0 from the checkpoint" in shown.output


def test_saving_over_a_checkpoint_replaces_its_teachers(tmp_path, tiny_data):
    import torch

    from bbucli.chat.loading import load_processor
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.checkpoint import save_checkpoint
    from bbucli.model.loading import load_model
    from bbucli.schema import Sample

    torch.manual_seed(0)
    model = BBUModel.from_qwen(load_model("tiny"), width=32, layers=1, heads=2, ffn=64)
    processor = load_processor("tiny")
    pool = [e.student for e in read_episodes(tiny_data / "bbu.teachers.jsonl")]
    first, second = (Sample((str(tiny_data / t.image),), t.objects) for t in pool[:2])
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, processor, teachers=[first])
    (folder / "optimizer.pt").write_bytes(b"kept")  # a Trainer's file, carried over
    save_checkpoint(folder, model, processor, teachers=[second])
    [stored] = checkpoint_teachers(folder)
    assert stored.objects == second.objects and Path(stored.image).name == Path(second.image).name
    assert len(list((folder / TEACHERS_DIR / "images").iterdir())) == 1
    assert (folder / "optimizer.pt").read_bytes() == b"kept"
