"""`bbu convert` on hostile exports (issue 15, the convert items): an interrupted re-convert, 16-bit
PNGs, OUT that is a folder, Labelme `../` image paths, paths leaving the input folder, duplicate
stems and boxes, an empty val split; and a property test over randomly corrupted exports. Every
corpus is built here by code."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from bbucli.cli.app import app
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from tests.convert.conftest import SCREW_ZH, RawSet

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["convert", *map(str, args)])


def files(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) -> sha256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def report_of(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".report.json").read_text(encoding="utf-8"))


# --- 2: an interrupted re-convert leaves the previous dataset -------------------------------------


def six_images(rawset: RawSet) -> None:
    for i in range(6):
        rawset.vendor(f"QC-{i}", wh=(280 + 28 * i, 210))


class StopAfter:
    """A progress callback that stops the run like Ctrl-C once `n` images are resized."""

    def __init__(self, n: int) -> None:
        self.n, self.resized = n, 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "resize":
            self.resized = done
            if done >= self.n:
                raise KeyboardInterrupt


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_reconvert_leaves_the_previous_dataset_byte_identical(
    rawset, tmp_path, workers
):
    six_images(rawset)
    out = tmp_path / "out" / "d.jsonl"
    (out.parent / "images").mkdir(parents=True)
    (out.parent / "images" / "keep.jpeg").write_bytes(b"another dataset's image")
    convert_dataset(rawset.root, out, ConvertOptions(val_ratio=0.25))
    before = files(out.parent)
    stop = StopAfter(3)
    smaller = ConvertOptions(val_ratio=0.25, max_pixels=30 * 28 * 28, workers=workers)
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(rawset.root, out, smaller, progress=stop)
    assert stop.resized >= 3
    assert files(out.parent) == before  # JSONL, report and every image as they were
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["d.jsonl", "d.val.jsonl", "d.teachers.jsonl", "d.report.json", "images"]
    )  # no staging folder left
    # the same run, not interrupted, replaces the whole dataset and keeps the foreign image
    convert_dataset(rawset.root, out, smaller)
    with Image.open(out.parent / "images" / "QC-0.jpeg") as im:
        assert im.width * im.height <= 30 * 28 * 28
    assert (out.parent / "images" / "keep.jpeg").read_bytes() == b"another dataset's image"
    assert report_of(out)["options"]["max_pixels"] == 30 * 28 * 28
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_an_interrupted_first_convert_leaves_no_folder_behind(rawset, tmp_path):
    six_images(rawset)
    out = tmp_path / "new" / "deeper" / "d.jsonl"
    with pytest.raises(KeyboardInterrupt):
        convert_dataset(rawset.root, out, ConvertOptions(), progress=StopAfter(2))
    assert not (tmp_path / "new").exists()


def test_an_images_folder_that_is_a_link_stays_a_link(rawset, tmp_path):
    six_images(rawset)
    real = tmp_path / "big_disk" / "images"
    real.mkdir(parents=True)
    (real / "keep.jpeg").write_bytes(b"another dataset's image")
    out = tmp_path / "out" / "d.jsonl"
    out.parent.mkdir()
    (out.parent / "images").symlink_to(real)
    for max_pixels in (50 * 28 * 28, 30 * 28 * 28):
        convert_dataset(rawset.root, out, ConvertOptions(max_pixels=max_pixels))
        assert (out.parent / "images").is_symlink()
        with Image.open(real / "QC-0.jpeg") as im:
            assert im.width * im.height <= max_pixels
    assert (real / "keep.jpeg").read_bytes() == b"another dataset's image"
    leftovers = [p for p in (*out.parent.iterdir(), *real.parent.iterdir()) if p.name[0] == "."]
    assert leftovers == []


def test_ctrl_c_prints_interrupted_nothing_changed_and_exits_130(rawset, tmp_path):
    """A real SIGINT: the taxonomy is a named pipe (as `--taxonomy <(...)` gives), so the run
    blocks reading it until this test has sent the signal."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    six_images(rawset)
    out = tmp_path / "out" / "d.jsonl"
    assert invoke(rawset.root, out).exit_code == 0
    before = files(out.parent)
    fifo = tmp_path / "taxonomy.yaml"
    os.mkfifo(fifo)

    def interrupt() -> None:
        fd = os.open(fifo, os.O_WRONLY)  # returns once convert has opened the pipe
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as Ctrl-C does
        threading.Event().wait(0.5)  # the pipe stays open (no EOF) until the signal has landed
        os.close(fd)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    try:
        result = invoke(rawset.root, out, "--taxonomy", fifo, "--max-pixels", 30 * 28 * 28)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped `bbu convert` as a KeyboardInterrupt")
    thread.join(5)
    assert result.exit_code == 130, result.output
    assert "interrupted, nothing changed" in result.output
    assert "Traceback" not in result.output
    assert files(out.parent) == before


# --- 3: 16-bit PNGs -------------------------------------------------------------------------------


def test_a_16bit_png_keeps_its_gradient(rawset, tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 280), (210, 1)).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    rawset.vendor("ramp", image=False)
    image.save(rawset.root / "ramp.png")
    out = tmp_path / "out" / "d.jsonl"
    result = invoke(rawset.root, out, "--pool", 0, "--val-ratio", 0, "--strict")
    assert result.exit_code == 0, result.output
    with Image.open(out.parent / "images" / "ramp.jpeg") as im:
        columns = np.asarray(im.convert("L"), dtype=float).mean(axis=0)
    assert columns[0] < 8 and columns[-1] > 247  # black to white, not all white
    assert abs(columns[len(columns) // 2] - 127.5) < 8
    assert (np.diff(columns) > -3).all()  # still a ramp


# --- 9: OUT is a folder ---------------------------------------------------------------------------


def test_out_that_is_a_folder_is_one_error_line_before_any_work(rawset, tmp_path):
    six_images(rawset)
    folder = tmp_path / "out"
    folder.mkdir()
    result = invoke(rawset.root, folder)
    assert result.exit_code == 2, result.output
    assert f"error: OUT {folder} is a folder: OUT names the train JSONL to write" in result.output
    assert f"bbu convert raw/ --out {folder / 'bbu.jsonl'}" in result.output
    (folder / "d.jsonl").mkdir()  # a folder with the JSONL's name
    (folder / "e.val.jsonl").mkdir()  # a folder where a sibling goes
    for out, shown in ((folder / "d.jsonl", "OUT"), (folder / "e.jsonl", "output")):
        result = invoke(rawset.root, out)
        assert result.exit_code == 2, result.output
        assert f"error: {shown} " in result.output and "is a folder" in result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in folder.rglob("*")) == ["d.jsonl", "e.val.jsonl"]
    (folder / "notes.txt").write_text("a file, not a folder", encoding="utf-8")
    result = invoke(rawset.root, folder / "notes.txt" / "d.jsonl")
    assert result.exit_code == 1, result.output
    assert f"error: cannot write into the output folder {folder / 'notes.txt'}" in result.output


# --- 11, 16: image paths --------------------------------------------------------------------------


def labelme_at(rawset: RawSet, rel: str, image_path: str) -> None:
    rawset.json(
        rel,
        {
            "shapes": [
                {"label": SCREW_ZH, "points": [[20, 30], [60, 80]], "shape_type": "rectangle"}
            ],
            "imagePath": image_path,
            "imageWidth": 280,
            "imageHeight": 210,
        },
    )


def test_labelme_image_paths_up_a_folder_pass_strict(rawset, tmp_path):
    rawset.jpeg("img/x.jpeg")
    rawset.jpeg("img/y.jpeg")
    labelme_at(rawset, "ann/x.json", "../img/x.jpeg")
    labelme_at(rawset, "ann/y.json", "..\\img\\y.jpeg")  # a Windows export
    out = tmp_path / "out" / "d.jsonl"
    result = invoke(rawset.root, out, "--strict", "--pool", 0, "--val-ratio", 0)
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert report["issues"] == [] and report["images_kept"] == 2
    sources = [e["meta"]["source"] for e in map(json.loads, out.read_text().splitlines())]
    assert sorted(s[f"{n}.jpeg"]["path"] for s, n in zip(sources, "xy", strict=True)) == [
        "img/x.jpeg",
        "img/y.jpeg",
    ]


def test_image_paths_leaving_the_input_folder_are_reported_and_refused_by_strict(tmp_path):
    rawset = RawSet(tmp_path / "raw")
    elsewhere = RawSet(tmp_path / "elsewhere")
    rawset.vendor("inside")
    labelme_at(rawset, "site/up.json", "../../elsewhere/up.jpeg")
    elsewhere.jpeg("up.jpeg")
    absolute = elsewhere.jpeg("abs.jpeg")
    rawset.json(
        "coco.json",
        {
            "images": [{"id": 1, "file_name": str(absolute), "width": 280, "height": 210}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}],
            "categories": [{"id": 1, "name": SCREW_ZH}],
        },
    )
    before = files(tmp_path)
    out = tmp_path / "out" / "d.jsonl"
    strict = invoke(rawset.root, out, "--strict")
    assert strict.exit_code == 1 and "outside_input" in strict.output, strict.output
    assert files(tmp_path) == before
    result = invoke(rawset.root, out, "--pool", 0, "--val-ratio", 0)
    assert result.exit_code == 0, result.output
    outside = [i for i in report_of(out)["issues"] if i["reason"] == "outside_input"]
    assert [(i["file"], i["detail"].split(" leaves")[0]) for i in outside] == [
        ("coco.json", f"coco.json: {absolute}"),
        ("site/up.json", "site/up.json: ../../elsewhere/up.jpeg"),
    ]
    assert report_of(out)["images_kept"] == 3  # noted, still converted


# --- 18: duplicate stems and boxes ----------------------------------------------------------------


def test_duplicate_stems_in_two_folders_are_both_kept_under_unique_names(rawset, tmp_path):
    rawset.vendor("cam_a/DSC_0001", objects=[((20, 30, 60, 80), SCREW_ZH)])
    rawset.vendor("cam_b/DSC_0001", objects=[((100, 30, 160, 80), SCREW_ZH)])
    out = tmp_path / "out" / "d.jsonl"
    result = invoke(rawset.root, out, "--pool", 0, "--val-ratio", 0)
    assert result.exit_code == 0, result.output
    assert "2 kept of 2" in result.output
    names = sorted(p.name for p in (out.parent / "images").iterdir())
    assert len(names) == 2 and all(n.startswith("DSC_0001-") and len(n) == 20 for n in names)
    episodes = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    paths = {
        e["meta"]["id"]: e["meta"]["source"][f"{e['meta']['id']}.jpeg"]["path"] for e in episodes
    }
    assert sorted(paths.values()) == ["cam_a/DSC_0001.jpeg", "cam_b/DSC_0001.jpeg"]
    first = files(out.parent)
    assert invoke(rawset.root, out, "--pool", 0, "--val-ratio", 0).exit_code == 0
    assert files(out.parent) == first  # the names are deterministic


def test_exact_duplicate_boxes_are_dropped_and_counted(rawset, tmp_path):
    box = (20, 30, 60, 80)
    rawset.vendor("a", objects=[(box, SCREW_ZH), (box, SCREW_ZH), ((90, 30, 140, 80), SCREW_ZH)])
    out = tmp_path / "out" / "d.jsonl"
    result = invoke(rawset.root, out, "--pool", 0, "--val-ratio", 0)
    assert result.exit_code == 0 and "duplicate_object 1" in result.output, result.output
    report = report_of(out)
    assert report["objects_kept"] == 2 and report["dropped_objects"] == {"duplicate_object": 1}
    (issue,) = report["issues"]
    assert issue["detail"].startswith("features[1]") and "as features[0]" in issue["detail"]


# --- 15: an empty val split -----------------------------------------------------------------------


def test_a_set_too_small_for_a_val_split_warns(rawset, tmp_path):
    rawset.vendor("a")
    rawset.vendor("b")  # teacher pool 1, train 1: nothing left for val
    out = tmp_path / "out" / "d.jsonl"
    result = invoke(rawset.root, out)
    assert result.exit_code == 0, result.output
    assert "warning: the val split is empty" in result.output
    assert "training has no validation set" in result.output
    assert report_of(out)["split_sizes"]["val"] == 0
    assert report_of(out)["warnings"][0].startswith("the val split is empty: 1 image(s)")
    six_images(rawset)
    result = invoke(rawset.root, out)
    assert "warning" not in result.output and report_of(out)["warnings"] == []


# --- property test: randomly corrupted exports ----------------------------------------------------

HOSTILE_PATHS = [
    "../../x.jpeg",
    "..\\..\\x.jpeg",
    "/etc/hostname",
    "/",
    "",
    "C:\\export\\a.jpeg",
    "img/../../../a.jpeg",
    "a.jpeg\x00.png",
    "\ud800.jpeg",
    "images",
]
MODES = ["L", "LA", "P", "RGBA", "I;16", "I", "F", "1", "CMYK"]


def base_export(root: Path) -> RawSet:
    """A small export in every format: two vendor pairs, a Labelme file, a COCO file."""
    rawset = RawSet(root)
    rawset.vendor("v/a", wh=(56, 42), objects=[((2, 3, 30, 40), SCREW_ZH)])
    rawset.vendor("v/b", wh=(42, 56), objects=[((5, 5, 20, 20), SCREW_ZH), ((1, 1, 9, 9), "x/y")])
    rawset.labelme("lm/c", wh=(56, 42))
    rawset.coco(
        "coco/instances.json",
        [("d.jpeg", (56, 42))],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 20, 30]}],
        [{"id": 1, "name": SCREW_ZH}],
    )
    return rawset


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _reencode(path: Path, encoding: str) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_bytes(text.encode(encoding, "replace"))


def _swap_size(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for a, b in (('"width": ', '"height": '), ('"imageWidth": ', '"imageHeight": ')):
        text = text.replace(a, "\0").replace(b, a).replace("\0", b)
    path.write_text(text, encoding="utf-8")


def _set_path(path: Path, hostile: str) -> None:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    if "imagePath" in data:
        data["imagePath"] = hostile
    elif "images" in data:
        data["images"][0]["file_name"] = hostile
    path.write_text(json.dumps(data), encoding="utf-8", errors="surrogatepass")


def _set_mode(path: Path, mode: str) -> None:
    with Image.open(path) as im:
        image = im.convert("RGB")
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(image.convert("L"), dtype=np.float32) * 257
        arrays = {"I;16": grey.astype(np.uint16), "I": grey.astype(np.int32), "F": grey / 65535}
        image = Image.fromarray(arrays[mode])
    else:
        image = image.convert(mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    image.save(path, format=fmt)  # keeps the .jpeg name: the content decides


def _mutate(rawset: RawSet, kind: str, target: int, arg) -> None:
    """Apply one corruption; one that no longer applies (a file an earlier one broke) is skipped."""
    with contextlib.suppress(
        OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError
    ):
        _apply(rawset, kind, target, arg)


def _apply(rawset: RawSet, kind: str, target: int, arg) -> None:
    jsons = sorted(rawset.root.rglob("*.json"))
    images = sorted(rawset.root.rglob("*.jpeg")) + sorted(rawset.root.rglob("*.jpg"))
    if kind == "truncate_json":
        _truncate(jsons[target % len(jsons)], arg)
    elif kind == "truncate_image":
        _truncate(images[target % len(images)], arg)
    elif kind == "encoding":
        _reencode(jsons[target % len(jsons)], arg)
    elif kind == "swap_size":
        _swap_size(jsons[target % len(jsons)])
    elif kind == "mode":
        _set_mode(images[target % len(images)], arg)
    elif kind == "path":
        candidates = [p for p in jsons if p.parent.name in ("lm", "coco")]
        _set_path(candidates[target % len(candidates)], arg)


MUTATION = st.one_of(
    st.tuples(st.just("truncate_json"), st.integers(0, 9), st.floats(0.0, 0.99)),
    st.tuples(st.just("truncate_image"), st.integers(0, 9), st.floats(0.0, 0.99)),
    st.tuples(
        st.just("encoding"), st.integers(0, 9), st.sampled_from(["gbk", "utf-16", "latin-1"])
    ),
    st.tuples(st.just("swap_size"), st.integers(0, 9), st.none()),
    st.tuples(st.just("mode"), st.integers(0, 9), st.sampled_from(MODES)),
    st.tuples(st.just("path"), st.integers(0, 9), st.sampled_from(HOSTILE_PATHS)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4), strict=st.booleans())
@example(mutations=[("path", 0, "\ud800.jpeg")], strict=False)  # a lone surrogate: crashed printing
@example(mutations=[("path", 1, "../../x.jpeg"), ("mode", 0, "I;16")], strict=True)
def test_corrupted_exports_never_crash_count_everything_and_touch_no_input(
    tmp_path_factory, mutations, strict
):
    tmp = tmp_path_factory.mktemp("hostile")
    rawset = base_export(tmp / "raw")
    for kind, target, arg in mutations:
        _mutate(rawset, kind, target, arg)
    before = files(rawset.root)
    out = tmp / "out" / "d.jsonl"
    result = invoke(rawset.root, out, "--unknown", "keep", *(["--strict"] if strict else []))
    assert result.exit_code in (0, 1), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    if result.exit_code == 1:
        assert "error: " in result.output
    assert files(rawset.root) == before  # no input changed
    if result.exit_code == 0:
        report = report_of(out)
        assert report["images_found"] == report["images_kept"] + sum(
            report["dropped_images"].values()
        )
        assert report["objects_found"] == report["objects_kept"] + sum(
            report["dropped_objects"].values()
        )
        written = [out.with_name(f"d{s}.jsonl") for s in ("", ".val", ".teachers")]
        lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in written)
        assert report["images_kept"] == sum(report["split_sizes"].values()) == lines
    assert not list(tmp.rglob(".*.staging-*"))  # no staging folder left
