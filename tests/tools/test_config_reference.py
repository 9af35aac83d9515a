"""The config reference in docs/config.md: generated from the config models, current, complete, and
every config field documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from bbucli.errors import BbuError
from bbucli.train.config.loading import BbuConfig
from bbucli.train.config.overrides import parse_yaml
from tools.config_reference import (
    DOC,
    END,
    START,
    _main,
    render_reference,
    write_reference,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_DOC = REPO / DOC
REGENERATE = "python -m tools.config_reference"


def sections() -> dict[str, type[BaseModel]]:
    """Dotted YAML path -> config model of every section, nested ones (optim.lrs) included."""
    found: dict[str, type[BaseModel]] = {}

    def visit(prefix: str, model: type[BaseModel]) -> None:
        found[prefix] = model
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                visit(f"{prefix}.{name}", field.annotation)

    for name, field in BbuConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            visit(name, field.annotation)
    return found


def rows(text: str) -> dict[str, dict[str, list[str]]]:
    """Heading -> key -> [type, default, description] of the rendered tables."""
    tables: dict[str, dict[str, list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip().strip("`")
            tables[heading] = {}
        elif line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            tables[heading][cells[0].strip("`")] = cells[1:]
    return tables


def test_doc_block_is_current():
    text = CONFIG_DOC.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1
    block = text.split(START)[1].split(END)[0]
    assert block.strip() == render_reference().strip(), (
        f"{DOC}'s config reference is stale: run `{REGENERATE}`"
    )


def test_default_target_is_the_config_doc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)
    assert Path("docs/config.md") == DOC
    assert _main(["--check"]) == 0
    assert START not in (REPO / "README.md").read_text(encoding="utf-8")  # one copy, in docs/


def test_every_field_is_listed_with_its_default():
    tables = rows(render_reference())
    for path, model in {**sections(), "": BbuConfig}.items():
        for key, field in model.model_fields.items():
            if path == "" and key != "deepspeed":
                continue  # the sections themselves are headings, not rows
            row = tables[path or "deepspeed"].get(key)
            assert row is not None, f"{path}.{key} is missing from the reference"
            default = row[1]
            if field.is_required():
                assert default == "required", (path, key)
            elif isinstance(field.default, BaseModel):
                assert default == f"see `{path}.{key}`" and f"{path}.{key}" in tables
            else:
                value, problems = parse_yaml(default.strip("`"))
                want = field.default
                want = str(want) if isinstance(want, Path) else want
                want = list(want) if isinstance(want, tuple) else want
                assert not problems and value == want, (path, key, default)


def test_types_are_readable():
    tables = rows(render_reference())
    assert tables["model"]["min_pixels"][0] == "int >= 1"
    assert tables["data"]["lang"][0] == '"zh" \\| "en"'
    assert tables["data"]["val"][0] == "path or null"
    assert tables["detection"]["dropout"][0] == "float in [0, 1)"
    assert tables["detection"]["prior_prob"][0] == "float in (0, 1)"
    assert tables["loss"]["lm_max_tokens"][0] == "int >= 1 or null"
    assert tables["optim"]["betas"][0] == "[float, float]"
    assert tables["train"]["resume"][0] == "bool or path"
    assert tables["deepspeed"]["deepspeed"][0] == "path, mapping or null"


def test_every_field_has_a_description():
    undocumented = [
        f"{path}.{key}" if path else key
        for path, model in {**sections(), "": BbuConfig}.items()
        for key, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undocumented == [], "add Field(..., description=...) to these config fields"


def test_write_reference_rewrites_a_stale_block(tmp_path: Path):
    doc = tmp_path / "config.md"
    doc.write_text(
        f"# Title\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n", encoding="utf-8"
    )
    assert write_reference(doc) is True
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "old table" not in text and render_reference() in text
    assert write_reference(doc) is False
    assert doc.read_text(encoding="utf-8") == text


@pytest.mark.parametrize(
    "body",
    ["no markers\n", f"{START}\nonly a start\n", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"],
)
def test_missing_markers_raise(tmp_path: Path, body: str):
    doc = tmp_path / "config.md"
    doc.write_text(body, encoding="utf-8")
    with pytest.raises(BbuError, match="no config reference block"):
        write_reference(doc)
    assert doc.read_text(encoding="utf-8") == body


def test_check_exits_1_when_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    doc = tmp_path / "config.md"
    doc.write_text(f"{START}\nold\n{END}\n", encoding="utf-8")
    assert _main(["--check", str(doc)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stale" in err and REGENERATE in err
    assert _main([str(doc)]) == 0
    assert _main(["--check", str(doc)]) == 0
