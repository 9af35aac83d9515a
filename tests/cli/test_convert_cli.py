"""`bbu convert` through Typer's runner: exit codes 0/1/2, the error line, --strict, --dry-run, --help,
and hostile input: OUT's images/ among the originals, names that are not UTF-8, symlink loops, the umask."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bbucli.cli.app import app

runner = CliRunner()
ZH = "连接点（螺丝）/BBU安装螺丝/连接正确"


def vendor(folder: Path, stem: str, label: str = ZH) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (280, 210), (90, 90, 90)).save(folder / f"{stem}.jpeg", quality=90)
    ring = [[10, 10], [50, 10], [50, 50], [10, 50], [10, 10]]
    feature = {"geometry": {"type": "ExtentPolygon", "coordinates": [ring]}, "properties": {"contentZh": {"标签": label}}}
    data = {"info": {"width": 280, "height": 210}, "markResult": {"features": [feature]}}
    (folder / f"{stem}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    for i in range(5):
        vendor(tmp_path / "raw", f"QC-{i}")
    return tmp_path / "raw"


def invoke(*args: str):
    return runner.invoke(app, ["convert", *map(str, args)])


def test_converts_and_prints_the_summary(raw, tmp_path):
    out = tmp_path / "out" / "d.jsonl"
    result = invoke(raw, out, "--teachers", "1", "--pool", "1", "--val-ratio", "0.25", "--lang", "en")
    assert result.exit_code == 0, result.output
    for text in ("images", "5 kept of 5", "screw/bbu_install_screw/correct", "teacher pool", "train 3, val 1, teachers 1", "d.report.json"):
        assert text in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["d.jsonl", "d.report.json", "d.teachers.jsonl", "d.val.jsonl", "images"]


def test_dry_run_writes_nothing(raw, tmp_path):
    result = invoke(raw, tmp_path / "out" / "d.jsonl", "--dry-run")
    assert result.exit_code == 0 and "dry run" in result.output
    assert not (tmp_path / "out").exists()


def test_strict_fails_on_any_issue_and_shows_it(raw, tmp_path):
    vendor(raw, "odd", label="神秘/东西")
    out = tmp_path / "out" / "d.jsonl"
    assert invoke(raw, out).exit_code == 0  # not strict: dropped and counted
    out.parent.joinpath("d.jsonl").unlink()
    result = invoke(raw, out, "--strict")
    assert result.exit_code == 1
    assert "odd.json" in result.output and "unknown_label" in result.output
    assert "error: --strict:" in result.output
    assert not out.exists()


def test_unknown_error_is_one_error_line_exit_1(raw, tmp_path):
    vendor(raw, "odd", label="神秘/东西")
    result = invoke(raw, tmp_path / "d.jsonl", "--unknown", "error")
    assert result.exit_code == 1
    assert "error: odd.json: unknown label '神秘/东西'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--unknown", "maybe"],
        ["--levels", "4"],
        ["--lang", "fr"],
        ["--val-ratio", "1.5"],
    ],
)
def test_bad_options_exit_2(raw, tmp_path, args):
    result = invoke(raw, tmp_path / "d.jsonl", *args)
    assert result.exit_code == 2


def test_bad_paths_and_taxonomy_exit_2(raw, tmp_path):
    assert invoke(tmp_path / "nowhere", tmp_path / "d.jsonl").exit_code == 2
    result = invoke(raw, tmp_path / "d.json")
    assert result.exit_code == 2 and "error: output must end in .jsonl" in result.output
    bad = tmp_path / "tax.yaml"
    bad.write_text("version: 1\nclasses: []\n", encoding="utf-8")
    result = invoke(raw, tmp_path / "d.jsonl", "--taxonomy", bad)
    assert result.exit_code == 2 and "error: " in result.output and "tax.yaml" in result.output


def test_empty_folder_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "raw").mkdir()
    result = invoke(tmp_path / "raw", tmp_path / "d.jsonl")
    assert result.exit_code == 1 and "error: no usable image" in result.output


def test_help_shows_an_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "bbu convert examples/raw" in result.output and "--dry-run" in result.output and "--teachers" in result.output


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_refuses_an_images_folder_that_is_the_input_folder(tmp_path):
    photos = tmp_path / "data" / "images"  # bbu convert data/images data/bbu.jsonl
    for i in range(3):
        vendor(photos, f"QC-{i}")
    before = _hashes(tmp_path)
    for extra in ([], ["--dry-run"]):
        result = invoke(photos, tmp_path / "data" / "bbu.jsonl", *extra)
        assert result.exit_code == 2, result.output
        assert f"error: output images folder {photos} is the input folder {photos}" in result.output
        assert "pick an OUT in another folder" in result.output and "Traceback" not in result.output
    assert _hashes(tmp_path) == before  # no input changed, nothing written


def test_refuses_a_coco_export_converted_into_itself(tmp_path):
    raw = tmp_path / "coco"
    (raw / "images").mkdir(parents=True)
    entries = []
    for i in range(3):
        Image.new("RGB", (280, 210), (90, 90, 90)).save(raw / "images" / f"c{i}.jpeg", quality=90)
        entries.append({"id": i + 1, "file_name": f"c{i}.jpeg", "width": 280, "height": 210})
    coco = {
        "images": entries,
        "annotations": [{"id": i, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 40, 40]} for i in range(3)],
        "categories": [{"id": 1, "name": ZH}],
    }
    (raw / "instances.json").write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    before = _hashes(raw)
    result = invoke(raw, raw / "bbu.jsonl")
    assert result.exit_code == 2, result.output
    assert f"error: output images folder {raw / 'images'} holds the input file images/c0.jpeg of {raw}" in result.output
    assert _hashes(raw) == before  # no input changed, nothing written
    assert invoke(raw, tmp_path / "out" / "bbu.jsonl").exit_code == 0  # another OUT works
    assert _hashes(raw) == before


def test_a_file_name_that_is_not_utf8_converts(raw, tmp_path):
    gbk = b"\xb2\xe2\xca\xd4"  # "测试" in GBK, as a Windows zip leaves it
    vendor(raw, "tmp")
    for suffix in (b".jpeg", b".json"):
        os.rename(raw / f"tmp{suffix.decode()}", os.fsencode(raw) + b"/" + gbk + suffix)
    sub = os.fsencode(raw) + b"/" + gbk
    os.mkdir(sub)
    fd = os.open(sub + b"/" + gbk + b"2.jpeg", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, (raw / "QC-0.jpeg").read_bytes())
    os.close(fd)
    out = tmp_path / "out" / "d.jsonl"
    dry = invoke(raw, out, "--dry-run")
    assert dry.exit_code == 0 and "6 kept of 6" in dry.output and "Traceback" not in dry.output
    result = invoke(raw, out, "--pool", "0", "--val-ratio", "0")
    assert result.exit_code == 0 and "6 kept of 6" in result.output, result.output
    assert "unannotated_image" in result.output
    episodes = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    (ep,) = [e for e in episodes if e["meta"]["id"] == r"\xb2\xe2\xca\xd4"]
    assert ep["student"]["images"] == [r"images/\xb2\xe2\xca\xd4.jpeg"]
    assert (out.parent / ep["student"]["images"][0]).is_file()
    report = json.loads(out.with_name("d.report.json").read_text(encoding="utf-8"))
    assert report["images_kept"] == 6
    assert [i["file"] for i in report["issues"]] == [r"\xb2\xe2\xca\xd4/\xb2\xe2\xca\xd42.jpeg"]


def _invoke_within(seconds: float, *args: str):
    """`invoke`, failing the test instead of hanging it when the command does not finish."""
    done: list = []
    thread = threading.Thread(target=lambda: done.append(invoke(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"bbu convert still running after {seconds} s"
    return done[0]


def test_symlink_loops_neither_repeat_files_nor_hang(raw, tmp_path):
    vendor(raw / "site" / "deep", "QC-9")
    (raw / "site" / "up").symlink_to("..")  # one loop
    (raw / "site" / "deep" / "up").symlink_to("../..")  # a second: the walk branches at each level
    (raw / "site" / "deep" / "self").symlink_to("self")  # a link that resolves to nothing
    (raw / "mirror").symlink_to("site")  # a second way into the same folder
    out = tmp_path / "out" / "d.jsonl"
    result = _invoke_within(60, raw, out, "--pool", "0", "--val-ratio", "0")
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_name("d.report.json").read_text(encoding="utf-8"))
    assert (report["annotation_files"], report["images_found"], report["images_kept"]) == (6, 6, 6)
    assert report["issues"] == []
    assert sorted(p.name for p in (out.parent / "images").iterdir()) == [f"QC-{i}.jpeg" for i in (0, 1, 2, 3, 4, 9)]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(raw, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = tmp_path / "out" / "d.jsonl"
        result = invoke(raw, out, "--workers", "2")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    files = [p for p in out.parent.rglob("*") if p.is_file()]
    assert len(files) == 4 + 5
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(mode) for p in files}
