"""Tests for bbucli.demo.synthetic: determinism, vendor format, EXIF rotation, the committed sample."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bbucli.demo.synthetic import KNOWN_ZH_LABELS, generate_raw_set, orientation_for_index
from bbucli.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# The raw label pairs (Chinese path -> English code path), written out independently of LABELS.
EXPECTED_LABELS = {
    "连接点（螺丝）/BBU安装螺丝/连接正确": "connection_point/install_screw/install_screw_true",
    "连接点（螺丝）/BBU安装螺丝/连接错误": "connection_point/install_screw/install_screw_false",
    "连接点（螺丝）/CPRI光缆和BBU连接点/连接正确": "connection_point/cpri_connection/cpri_connection_true",
    "连接点（螺丝）/CPRI光缆和BBU连接点/连接错误": "connection_point/cpri_connection/cpri_connection_false",
    "连接点（螺丝）/BBU尾纤和ODF连接点/连接正确": "connection_point/odf_connection/odf_connection_true",
    "连接点（螺丝）/地排处螺丝/连接正确": "connection_point/floor_screw/floor_screw_true",
    "连接点（螺丝）/地排处螺丝/连接错误": "connection_point/floor_screw/floor_screw_false",
    "BBU品牌/华为": "bbu_brand/huawei",
    "BBU品牌/中兴": "bbu_brand/zhongxing",
    "BBU品牌/爱立信": "bbu_brand/alixin",
    "挡风板/安装": "bbu_sheild/install",
    "挡风板/未安装": "bbu_sheild/non_install",
    "标签/匹配": "label/label_true",
    "标签/不匹配": "label/label_false",
}
SMALL = {"n_images": 9, "seed": 0, "size": (360, 480), "exif_rotated_every": 3}
# English code paths of the parts that have a defect state: intact state -> defect state.
DEFECT_OF = {
    "connection_point/install_screw/install_screw_true": "connection_point/install_screw/install_screw_false",
    "connection_point/cpri_connection/cpri_connection_true": "connection_point/cpri_connection/cpri_connection_false",
    "connection_point/floor_screw/floor_screw_true": "connection_point/floor_screw/floor_screw_false",
    "label/label_true": "label/label_false",
    "bbu_sheild/install": "bbu_sheild/non_install",
}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> list[Path]:
    return generate_raw_set(tmp_path_factory.mktemp("a"), **SMALL)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _boxes(record: dict) -> list[tuple[float, float, float, float]]:
    out = []
    for feature in record["markResult"]["features"]:
        ring = feature["geometry"]["coordinates"][0]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        out.append((min(xs), min(ys), max(xs), max(ys)))
    return out


def test_same_seed_is_byte_identical_and_other_seed_differs(small_set, tmp_path):
    again = generate_raw_set(tmp_path / "b", **SMALL)
    assert [p.name for p in again] == [p.name for p in small_set]
    assert _files(tmp_path / "b") == _files(small_set[0].parent)
    other = generate_raw_set(tmp_path / "c", **{**SMALL, "seed": 1, "n_images": 2})
    assert [p.read_bytes() for p in other] != [p.read_bytes() for p in small_set[:2]]
    assert {p.name for p in other}.isdisjoint({p.name for p in small_set})


def test_vendor_structure_and_boxes(small_set):
    for image_path in small_set:
        assert image_path.suffix == ".jpeg"
        assert image_path.stem.startswith("QC-2023") and "_" in image_path.stem
        record = json.loads(image_path.with_suffix(".json").read_text(encoding="utf-8"))
        assert {"info", "markResult", "statistcs", "qualityResult", "workload"} <= set(record)
        width, height = record["info"]["width"], record["info"]["height"]
        assert (width, height) == SMALL["size"]
        collection = record["markResult"]
        assert collection["type"] == "FeatureCollection"
        assert 1 <= len(collection["features"]) <= 26
        for feature in collection["features"]:
            assert feature["type"] == "Feature"
            assert feature["geometry"]["type"] == "ExtentPolygon"
            ring = feature["geometry"]["coordinates"][0]
            assert len(ring) == 5 and ring[0] == ring[-1]
            assert all(isinstance(v, float) for point in ring for v in point)
            props = feature["properties"]
            zh, en = props["contentZh"]["标签"], props["content"]["label"]
            assert zh in KNOWN_ZH_LABELS and EXPECTED_LABELS[zh] == en
            assert isinstance(props.get("question", ""), (str, list))
            assert isinstance(props.get("question_ex", ""), str)
        for x1, y1, x2, y2 in _boxes(record):
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def test_exif_rotated_images_transpose_to_the_info_frame(small_set):
    seen = set()
    for index, image_path in enumerate(small_set):
        info = json.loads(image_path.with_suffix(".json").read_text(encoding="utf-8"))["info"]
        with Image.open(image_path) as im:
            stored = im.size
            orientation = im.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(im).size
        assert orientation == orientation_for_index(index, SMALL["exif_rotated_every"])
        assert upright == (info["width"], info["height"])
        if orientation in (6, 8):
            assert stored == (info["height"], info["width"])
        else:
            assert stored == (info["width"], info["height"])
        seen.add(orientation)
    assert seen == {1, 3, 6, 8}


def test_rotated_pixels_match_the_upright_render(tmp_path):
    """The stored rotated photo, once transposed, is the same scene as an unrotated run."""
    rotated = generate_raw_set(tmp_path / "r", 2, size=(300, 400), exif_rotated_every=2)[1]
    upright = generate_raw_set(tmp_path / "u", 2, size=(300, 400), exif_rotated_every=0)[1]
    with Image.open(rotated) as a, Image.open(upright) as b:
        pa = np.asarray(ImageOps.exif_transpose(a).convert("L"), dtype=np.float32)
        pb = np.asarray(b.convert("L"), dtype=np.float32)
    assert (
        pa.shape == pb.shape and np.abs(pa - pb).mean() < 3.0
    )  # only JPEG re-quantisation differs
    assert rotated.with_suffix(".json").read_bytes() == upright.with_suffix(".json").read_bytes()


def test_progress_and_argument_errors(tmp_path):
    calls = []
    generate_raw_set(
        tmp_path, 2, size=(256, 256), progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(1, 2), (2, 2)]
    with pytest.raises(UsageError):
        generate_raw_set(tmp_path, -1)
    with pytest.raises(UsageError):
        generate_raw_set(tmp_path, 1, size=(100, 100))


def _defect_share(paths: list[Path]) -> float:
    """Share of defect states among the objects of the parts that have one."""
    labels = []
    for path in paths:
        record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        labels += [f["properties"]["content"]["label"] for f in record["markResult"]["features"]]
    capable = [en for en in labels if en in DEFECT_OF or en in DEFECT_OF.values()]
    assert len(capable) > 100  # enough objects for the shares below to mean something
    return sum(en in DEFECT_OF.values() for en in capable) / len(capable)


def test_default_defect_rate_keeps_the_set_byte_identical(small_set, tmp_path):
    generate_raw_set(tmp_path, **SMALL, defect_rate=None)
    assert _files(tmp_path) == _files(small_set[0].parent)


def test_explicit_default_defect_rate_reproduces_the_committed_sample(tmp_path):
    """The first two committed photos (a missing shield, a loose screw) with defect_rate=None."""
    committed = sorted((EXAMPLES / "raw").glob("*.json"))[:2]
    paths = generate_raw_set(tmp_path, 2, seed=0, size=(1440, 1920), defect_rate=None)
    assert [p.with_suffix(".json").name for p in paths] == [p.name for p in committed]
    for path, kept in zip(paths, committed, strict=True):
        assert path.with_suffix(".json").read_bytes() == kept.read_bytes()


def test_defect_rate_balances_the_defect_states(tmp_path):
    small = {"n_images": 20, "seed": 0, "size": (256, 256)}
    assert _defect_share(generate_raw_set(tmp_path / "default", **small)) < 0.15
    assert _defect_share(generate_raw_set(tmp_path / "half", **small, defect_rate=0.5)) > 0.3
    assert _defect_share(generate_raw_set(tmp_path / "none", **small, defect_rate=0.0)) == 0.0
    assert _defect_share(generate_raw_set(tmp_path / "all", **small, defect_rate=1.0)) == 1.0


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_defect_rate_outside_0_1_is_a_usage_error(tmp_path, rate):
    with pytest.raises(UsageError, match=r"defect_rate must be in \[0, 1\]"):
        generate_raw_set(tmp_path, 1, size=(256, 256), defect_rate=rate)
    assert not any(tmp_path.iterdir())


def _documented_args() -> list[str]:
    lines = [
        ln
        for ln in (EXAMPLES / "README.md").read_text(encoding="utf-8").splitlines()
        if "examples/generate.py" in ln
    ]
    assert len(lines) == 1, "examples/README.md must document exactly one regenerate command"
    words = shlex.split(lines[0].strip())
    return words[words.index("examples/generate.py") + 1 :]


def test_committed_sample_is_reproducible_by_the_documented_command(tmp_path):
    spec = importlib.util.spec_from_file_location("examples_generate", EXAMPLES / "generate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    documented = script.build_parser().parse_args(_documented_args())
    assert documented.out == Path("examples/raw")
    committed = sorted((REPO / documented.out).glob("*.jpeg"))
    assert len(committed) == documented.n
    for image_path in committed:
        record = json.loads(image_path.with_suffix(".json").read_text(encoding="utf-8"))
        assert 1 <= len(record["markResult"]["features"]) <= 26
        for x1, y1, x2, y2 in _boxes(record):
            assert (
                0 <= x1 < x2 <= record["info"]["width"] and 0 <= y1 < y2 <= record["info"]["height"]
            )
    # Image i does not depend on --n, so the first 6 (one of them EXIF-rotated) stand for the set.
    paths = script.main([*_documented_args(), "--out", str(tmp_path), "--n", "6"])
    assert [p.name for p in paths] == [p.name for p in committed[:6]]
    for path in paths:
        kept = REPO / documented.out / path.name
        # JSON (the labels and boxes) must match exactly; JPEG bytes may differ across
        # libjpeg builds, so pixels are compared with a small tolerance instead.
        assert path.with_suffix(".json").read_bytes() == kept.with_suffix(".json").read_bytes()
        fresh_px = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        kept_px = np.asarray(Image.open(kept).convert("RGB"), dtype=np.float32)
        assert fresh_px.shape == kept_px.shape
        assert np.abs(fresh_px - kept_px).mean() < 1.0, f"{kept.name} no longer matches its generator"


def test_zoom_draws_closer_photos_with_boxes_inside_the_frame(tmp_path):
    size = (320, 440)
    near = generate_raw_set(tmp_path / "near", 8, size=size, zoom=1.5, exif_rotated_every=0)
    far = generate_raw_set(tmp_path / "far", 8, size=size, exif_rotated_every=0)
    sides = {}
    for name, paths in (("near", near), ("far", far)):
        found = []
        for path in paths:
            assert Image.open(path).size == size
            record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            for x1, y1, x2, y2 in _boxes(record):
                assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
                found.append(((x2 - x1) * (y2 - y1)) ** 0.5)
        sides[name] = float(np.median(found))
    assert 1.25 < sides["near"] / sides["far"] < 1.75
    with pytest.raises(UsageError, match="zoom"):
        generate_raw_set(tmp_path / "bad", 1, size=size, zoom=0.5)
