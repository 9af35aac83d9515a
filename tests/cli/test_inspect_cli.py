"""`bbu inspect` through Typer's runner on a really converted JSONL: every view, --json, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bbucli.cli.app import app
from bbucli.convert.pipeline import ConvertOptions, convert_dataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "raw"
runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "data.jsonl"
    convert_dataset(EXAMPLES, out, ConvertOptions(val_ratio=0.25))
    return out


@pytest.fixture(scope="module")
def bad(data) -> Path:
    """Line 1 good, 2 not JSON, 3 a missing image, 4 a student far over 4096 tokens, 5 good."""
    good = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    missing = json.loads(json.dumps(good[1]))
    missing["student"]["images"] = ["images/gone.jpeg"]
    huge = json.loads(json.dumps(good[2]))
    huge["student"]["objects"] *= 12
    lines = [good[0], "{oops", missing, huge, good[3]]
    path = data.parent / "bad.jsonl"
    path.write_text(
        "".join(
            (x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines
        ),
        encoding="utf-8",
    )
    return path


def invoke(*args):
    return runner.invoke(app, ["inspect", *map(str, args)])


def test_summary(data):
    result = invoke(data)
    assert result.exit_code == 0, result.output
    for text in ("9: 9 inspected", "tokens/episode", "token split", "vision", "answer",
                 "over max_tokens 4096", "standard B=4, file order", "length-sorted",
                 "packed, 8192 tokens/bin", "objects per class", "BBU品牌/华为", "episodes/s"):
        assert text in result.output, text
    assert "problem" not in result.output


def test_summary_json_parses_and_follows_the_options(data):
    result = invoke(
        data, "--json", "--max-tokens", "2000", "--batch-size", "2", "--batch-tokens", "6000"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["episodes"] == 9 and summary["max_tokens"] == 2000
    assert summary["batching"]["batch_size"] == 2 and summary["batching"]["batch_tokens"] == 6000
    assert summary["over_budget"] == len(summary["problems"]) > 0
    assert all(p["kind"] == "over_budget" for p in summary["problems"])
    assert summary["tokens"]["max"] <= 2000


def test_index_detail(data):
    result = invoke(data, "--index", "1")
    assert result.exit_code == 0, result.output
    for text in (
        "episode 1 (line 2",
        "system",
        "teacher 1",
        "student",
        "1x52x38",
        "of max_tokens 4096",
    ):
        assert text in result.output, text


def test_tensors_show_cu_seqlens(data):
    result = invoke(data, "--index", "0", "--tensors", "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["tensors"]["stages"]
    packed = {t["name"]: t for t in stages[2]["tensors"]}
    lengths = [stages[0]["tensors"][0]["shape"][0]]
    cu = packed["cu_seqlens"]
    assert cu["shape"] == [3] and cu["dtype"] == "torch.int32" and cu["value"][1] == lengths[0]
    assert packed["input_ids"]["shape"] == [1, cu["value"][-1]]
    standard = {t["name"]: t for t in stages[1]["tensors"]}
    assert standard["input_ids"]["shape"][0] == 2
    text = invoke(data, "--tensors", "--batch-size", "2").output
    assert "cu_seqlens" in text and "PackedDataCollator" in text and "StandardDataCollator" in text


def test_tokens_are_coloured_by_segment(data):
    result = invoke(data, "--tokens", "--index", "2")
    assert result.exit_code == 0, result.output
    assert "teacher answer" in result.output and "student answer" in result.output
    assert "<|image_pad|>x494" in result.output and '"bbox_2d"' in result.output
    stream = json.loads(invoke(data, "--tokens", "--index", "2", "--json").stdout)["tokens"]
    assert {p["segment"] for p in stream["pieces"]} == {0, 1, 2}


def test_text_ids(data):
    result = invoke(data, "--text", "Hello world", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text"]["ids"] == [9707, 1879]
    assert "ids: [9707, 1879]" in invoke(data, "--text", "Hello world").output


def test_render_png(data, tmp_path):
    out = tmp_path / "ep.png"
    result = invoke(data, "--index", "3", "--render", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output.replace("\n", "")
    rendered = json.loads(invoke(data, "--index", "3", "--render", out, "--json").stdout)["render"]
    with Image.open(out) as png:
        assert list(png.size) == rendered["size"]


def test_bad_input_listed_by_line_exit_0(bad):
    result = invoke(bad)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "problems (first 3 of 3" in out
    assert "bad.jsonl:2" in out and "invalid_record" in out
    assert "bad.jsonl:3" in out and "missing_image" in out
    assert "bad.jsonl:4" in out and "over_budget" in out
    assert "5: 3 inspected" in out and "the rest of the file was inspected" in out


def test_nothing_inspectable_is_exit_1(tmp_path):
    path = tmp_path / "junk.jsonl"
    path.write_text('{"teachers": []}\nnot json\n', encoding="utf-8")
    result = invoke(path)
    assert result.exit_code == 1
    assert "junk.jsonl:1" in result.output and "error: nothing in" in result.output
    assert "Traceback" not in result.output


def test_bad_index_is_one_error_line(bad):
    result = invoke(bad, "--index", "1")
    assert result.exit_code == 1
    assert "error:" in result.output and "bad.jsonl:2: invalid JSON" in result.output
    assert invoke(bad, "--index", "99").exit_code == 1


def test_help_has_examples_and_exit_codes():
    result = runner.invoke(app, ["inspect", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "bbu inspect data.jsonl --index 3 --tokens" in result.output
    assert "Exit code 0 when the file was inspected, even with problems" in result.output
    assert invoke(Path("nope.jsonl")).exit_code == 2


def _hostile(data: Path) -> tuple[Path, tuple[int, int]]:
    """Line 1 good; 2 not UTF-8; 3 a student box far past its image; 4 one ending on its edge."""
    good = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    past, edge = json.loads(json.dumps(good[1])), json.loads(json.dumps(good[2]))
    past["student"]["objects"][0]["bbox_2d"] = [0, 0, 5000, 5000]
    with Image.open(data.parent / edge["student"]["images"][0]) as image:
        width, height = image.size
    x1, y1 = edge["student"]["objects"][0]["bbox_2d"][:2]
    edge["student"]["objects"][0]["bbox_2d"] = [x1, y1, width, height]
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in (good[0], past, edge)]
    lines.insert(1, b'{"student": "caf\xe9"}')
    path = data.parent / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with Image.open(data.parent / past["student"]["images"][0]) as image:
        return path, image.size


def test_non_utf8_line_and_box_past_the_image_are_problems_by_line(data):
    path, (width, height) = _hostile(data)
    result = invoke(path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    problems = {p["line"]: p for p in summary["problems"]}
    assert set(problems) == {2, 3} and summary["episodes"] == 3
    assert problems[2]["kind"] == "invalid_record"
    assert problems[2]["message"] == "not UTF-8 text: byte 0xe9 at byte 17"
    assert problems[3]["kind"] == "box_outside_image"
    assert f"1 box(es) outside the {width}x{height} image" in problems[3]["message"]
    assert "[0, 0, 5000, 5000]" in problems[3]["message"]
    text = runner.invoke(app, ["inspect", str(path)], env={"COLUMNS": "200"})
    assert text.exit_code == 0 and "Traceback" not in text.output
    assert "hostile.jsonl:2" in text.output and "hostile.jsonl:3" in text.output
    assert "4: 3 inspected, 1 unreadable, 1 with boxes past their image" in text.output
    assert "2 problem(s)" in text.output


def test_an_image_given_as_the_jsonl_is_one_error_line(data):
    photo = next((data.parent / "images").iterdir())
    result = invoke(photo)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{photo.name} is not a JSONL file" in result.output
    assert invoke(photo, "--index", "0").exit_code == 1


def test_render_into_a_folder(data, tmp_path):
    """--render names a folder, as in `bbu predict`: the picture is <jsonl stem>-<index>.png."""
    result = invoke(data, "--index", "2", "--render", tmp_path / "renders")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "renders").iterdir()] == ["data-2.png"]


@pytest.mark.parametrize("name", ["renders", "ep.png"])
def test_an_unwritable_render_is_one_error_line_before_the_work(data, tmp_path, name):
    blocker = tmp_path / "file.txt"  # a folder under a regular file: no one, root included, writes it
    blocker.write_text("a file, not a folder\n")
    result = invoke(data, "--index", "3", "--tokens", "--render", blocker / name)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "student" not in result.output  # nothing shown
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: cannot write the --render picture {blocker / name}")
    assert blocker.read_text() == "a file, not a folder\n"


def test_verify_images_finds_a_truncated_jpeg_by_line(data):
    """Its header reads (the default view passes it); its pixels do not decode."""
    records = data.read_text(encoding="utf-8").splitlines()
    image = json.loads(records[1])["student"]["images"][0]
    folder = data.parent / "truncated"
    (folder / "images").mkdir(parents=True)
    raw = (data.parent / image).read_bytes()
    (folder / image).write_bytes(raw[: len(raw) // 2])
    for record in (records[0], records[1]):  # teachers resolved in the same folder
        for sample in (json.loads(record)["student"], *json.loads(record)["teachers"]):
            target = folder / sample["images"][0]
            if not target.exists():
                target.write_bytes((data.parent / sample["images"][0]).read_bytes())
    jsonl = folder / "data.jsonl"
    jsonl.write_text(records[0] + "\n" + records[1] + "\n", encoding="utf-8")
    plain = invoke(jsonl, "--json")
    assert plain.exit_code == 0 and json.loads(plain.stdout)["summary"]["problems"] == []
    result = invoke(jsonl, "--verify-images", "--json")
    assert result.exit_code == 0, result.output
    [problem] = json.loads(result.stdout)["summary"]["problems"]
    assert (problem["line"], problem["kind"]) == (2, "unreadable_image")
    assert problem["message"].startswith(f"cannot decode image {folder / image}: image file is truncated")
    summary = json.loads(result.stdout)["summary"]
    assert summary["episodes"] == 1 and summary["images_decoded"] >= 2
    assert json.loads(plain.stdout)["summary"]["images_decoded"] == 0
    assert "images decoded as training decodes them" in invoke(jsonl, "--verify-images").output


def test_image_paths_leaving_the_jsonl_folder_are_problems_by_line(data):
    """An absolute path or one climbing out with ../ works here but breaks when the dataset is
    copied: a problem of its line, the rest inspected (issue 15, item 16)."""
    good = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    climbing, absolute, inside = ({"student": dict(g["student"])} for g in good[:3])  # no teachers
    climbing["student"]["images"] = ["../" + good[0]["student"]["images"][0]]
    absolute["student"]["images"] = [str(data.parent / good[1]["student"]["images"][0])]
    inside["student"]["images"] = ["./../sub/../" + good[2]["student"]["images"][0]]
    folder = data.parent / "sub"
    folder.mkdir(exist_ok=True)
    path = folder / "paths.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in (climbing, absolute, inside)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = invoke(path, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    kinds = {p["line"]: p["kind"] for p in summary["problems"]}
    assert kinds == dict.fromkeys((1, 2, 3), "image_outside_folder"), summary["problems"]
    assert summary["episodes"] == 3
