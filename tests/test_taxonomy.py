"""The taxonomy maps every raw label of the annotation platform (Chinese paths, English codes with
the source data's typos, known aliases) to its class; bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bbucli.errors import ConfigError
from bbucli.taxonomy import Taxonomy, default_path, normalize_label

REPO = Path(__file__).resolve().parents[1]

SUBTYPES = {  # Chinese subtype, English code subtype, class key part
    "BBU安装螺丝": ("install_screw", "bbu_install"),
    "CPRI光缆和BBU连接点": ("cpri_connection", "cpri_fiber_bbu"),
    "地排处螺丝": ("floor_screw", "ground_bar"),
    "BBU尾纤和ODF连接点": ("odf_connection", "bbu_pigtail_odf"),
    "BBU接地线机柜接地端": ("carbinet_grounding", "bbu_ground_wire_cabinet_end"),
}

EXPECTED = {
    # Chinese paths
    "BBU品牌/华为": "brand_huawei",
    "BBU品牌/中兴": "brand_zte",
    "BBU品牌/爱立信": "brand_ericsson",
    "挡风板/安装": "wind_shield_installed",
    "挡风板/未安装": "wind_shield_not_installed",
    "机柜空间/满载": "cabinet_space_full",
    "机柜空间/非满载": "cabinet_space_not_full",
    "标签/匹配": "label_match",
    "标签/不匹配": "label_mismatch",
    "线缆/光纤": "cable_fiber",
    "线缆/非光纤": "cable_non_fiber",
    # aliases
    "螺丝连接点/BBU安装螺丝/连接正确": "screw_bbu_install_correct",
    "螺丝或连接点/地排处螺丝/连接正确": "screw_ground_bar_correct",
    "连接点（螺丝）/BBU安装螺丝/安装正确": "screw_bbu_install_correct",
    "螺丝连接点/CPRI光缆和BBU连接点/安装正确": "screw_cpri_fiber_bbu_correct",
    "bbu基带处理单元/华为": "brand_huawei",
    "bbu基带处理单元/爱立信": "brand_ericsson",
    "标签贴纸/匹配": "label_match",
    "标签贴纸/不匹配": "label_mismatch",
    "挡风板/已安装": "wind_shield_installed",
    # English codes, with the source's typos
    "bbu_brand/huawei": "brand_huawei",
    "bbu_brand/zhongxing": "brand_zte",
    "bbu_brand/alixin": "brand_ericsson",
    "bbu_brand_zte": "brand_zte",
    "bbu_sheild/install": "wind_shield_installed",
    "bbu_sheild/non_install": "wind_shield_not_installed",
    "cabinet_room/full": "cabinet_space_full",
    "cabinet_room/non_full": "cabinet_space_not_full",
    "cable/fiber": "cable_fiber",
    "cable/non_fiber": "cable_non_fiber",
    "label/label_true": "label_match",
    "label/label_false": "label_mismatch",
    "other": "other",
    "其他": "other",
}
for _zh, (_code, _key) in SUBTYPES.items():
    EXPECTED[f"连接点（螺丝）/{_zh}/连接正确"] = f"screw_{_key}_correct"
    EXPECTED[f"连接点（螺丝）/{_zh}/连接错误"] = f"screw_{_key}_incorrect"
    EXPECTED[f"connection_point/{_code}/{_code}_true"] = f"screw_{_key}_correct"
    EXPECTED[f"connection_point/{_code}/{_code}_false"] = f"screw_{_key}_incorrect"


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy.load()


@pytest.mark.parametrize("label,key", sorted(EXPECTED.items()))
def test_every_raw_label_maps_to_its_class(tax, label, key):
    cls = tax.resolve(label)
    assert cls is not None, label
    assert cls.key == key


@pytest.mark.parametrize(
    "label,key",
    [
        ("连接点(螺丝)/BBU安装螺丝/连接正确", "screw_bbu_install_correct"),  # half-width parentheses
        (" 连接点（螺丝） / BBU安装螺丝 /连接正确 ", "screw_bbu_install_correct"),  # whitespace
        ("连接点（螺丝）／BBU安装螺丝／连接正确", "screw_bbu_install_correct"),  # full-width slashes
        ("Connection_Point/INSTALL_SCREW/install_screw_TRUE", "screw_bbu_install_correct"),  # case
        ("CONNECTION_POINT/ODF_CONNECTION/odf_connection_False", "screw_bbu_pigtail_odf_incorrect"),
        ("bbu基带处理单元/华为".upper(), "brand_huawei"),
    ],
)
def test_matching_normalises_width_whitespace_and_case(tax, label, key):
    cls = tax.resolve(label)
    assert cls is not None, label
    assert cls.key == key


def test_unknown_labels_resolve_to_none(tax):
    for label in ("", "连接点（螺丝）/BBU安装螺丝", "bbu_brand/nokia", "挡风板/安装正确", "foo"):
        assert tax.resolve(label) is None


def test_descs_in_both_languages_and_levels(tax):
    cls = tax.by_key("screw_bbu_install_correct")
    assert tax.desc(cls) == "连接点（螺丝）/BBU安装螺丝/连接正确"
    assert tax.desc(cls, "en") == "screw/bbu_install_screw/correct"
    assert tax.desc(cls, "en", levels=2) == "screw/bbu_install_screw"
    assert tax.desc(cls, "zh", levels=1) == "连接点（螺丝）"
    assert tax.desc(tax.by_key("brand_zte"), "en", levels=3) == "bbu_brand/zte"
    with pytest.raises(ValueError):
        tax.desc(cls, "en", levels=4)
    for lang in ("zh", "en"):
        assert len(tax.descs(lang)) == len(tax.classes)  # full descs are unique per language
        assert len(tax.descs(lang, levels=1)) == 7
        for c in tax.classes:
            assert tax.class_for_desc(c.desc(lang)) is c
            assert tax.resolve(c.desc(lang)) is c
    assert tax.class_for_desc("screw/bbu_install_screw") is None


def test_every_screw_subtype_has_both_states_and_defects_are_flagged(tax):
    states = {}
    for c in tax.classes:
        if c.en.startswith("screw/"):
            states.setdefault(c.en.split("/")[1], set()).add(c.en.split("/")[2])
    assert len(states) == 5 and all(s == {"correct", "incorrect"} for s in states.values())
    defects = {c.key for c in tax.classes if c.defect}
    assert defects == {
        *(f"screw_{key}_incorrect" for _, key in SUBTYPES.values()),
        "wind_shield_not_installed",
        "label_mismatch",
    }
    assert all(len(c.zh.split("/")) == len(c.en.split("/")) for c in tax.classes)


def test_shipped_taxonomy_is_the_documented_one():
    assert default_path().read_bytes() == (REPO / "configs" / "taxonomy" / "bbu.yaml").read_bytes()
    assert Taxonomy.load(REPO / "configs" / "taxonomy" / "bbu.yaml").sha256 == Taxonomy.load().sha256


def test_normalize_label():
    assert normalize_label("  A（b） /  c  d ") == "a(b)/c d"


def _write(tmp_path: Path, spec) -> Path:
    path = tmp_path / "tax.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path


def _spec(**override):
    spec = {
        "version": 1,
        "segment_aliases": {"螺丝连接点": "螺丝"},
        "classes": [
            {"key": "a", "zh": "螺丝/好", "en": "screw/good", "defect": False, "raw": ["s/ok"]},
            {"key": "b", "zh": "螺丝/坏", "en": "screw/bad", "defect": True, "raw": ["s/bad"]},
        ],
    }
    spec.update(override)
    return spec


def test_small_valid_file_loads(tmp_path):
    tax = Taxonomy.load(_write(tmp_path, _spec()))
    assert tax.resolve("螺丝连接点/坏").key == "b"
    assert tax.source == "tax.yaml"


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("version: 1\nclasses: [\n", "not valid YAML"),
        ("version: 1\nversion: 1\nclasses: []\n", "duplicate key 'version'"),
        (_spec(colour="red"), "colour"),
        (_spec(version=2), "version"),
        (_spec(classes=[{"key": "a", "zh": "x", "en": "x"}]), "classes[0] (a).defect"),
        (_spec(classes=[{"key": "a", "zh": "x", "en": "Bad Name", "defect": False}]), "classes[0] (a).en"),
        (_spec(classes=[{"key": "a", "zh": "x/y", "en": "x", "defect": False}]), "different numbers of levels"),
        (
            _spec(classes=[
                {"key": "a", "zh": "x", "en": "x", "defect": False, "raw": ["dup"]},
                {"key": "b", "zh": "y", "en": "y", "defect": False, "raw": ["DUP"]},
            ], segment_aliases={}),
            "label 'DUP' maps to both a and b",
        ),
        (
            _spec(classes=[{"key": "a", "zh": "x", "en": "x", "defect": False}, {"key": "a", "zh": "y", "en": "y", "defect": False}],
                  segment_aliases={}),
            "class key 'a' is used twice",
        ),
        (_spec(segment_aliases={"foo": "nowhere"}), "target is no label segment"),
        ("- just\n- a list\n", "Input should be a valid dictionary"),
    ],
)
def test_bad_files_raise_config_error_naming_file_and_key(tmp_path, spec, expected):
    with pytest.raises(ConfigError) as info:
        Taxonomy.load(_write(tmp_path, spec))
    assert "tax.yaml" in info.value.message
    assert expected in info.value.message
    assert info.value.exit_code == 2


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read taxonomy"):
        Taxonomy.load(tmp_path / "nope.yaml")
