"""The README's config reference: generated from the config models, current, complete, and every
config field documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from bbucli.errors import BbuError
from bbucli.train.config.loading import BbuConfig
from tools.config_reference import (
    END,
    START,
    _main,
    render_reference,
    write_reference,
)
from bbucli.train.config.overrides import parse_yaml

README = Path(__file__).resolve().parents[2] / "README.md"
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


def test_readme_block_is_current():
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1
    block = text.split(START)[1].split(END)[0]
    assert block.strip() == render_reference().strip(), (
        f"README.md's config reference is stale: run `{REGENERATE}`"
    )


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
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n", encoding="utf-8"
    )
    assert write_reference(readme) is True
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "old table" not in text and render_reference() in text
    assert write_reference(readme) is False
    assert readme.read_text(encoding="utf-8") == text


@pytest.mark.parametrize(
    "body",
    ["no markers\n", f"{START}\nonly a start\n", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"],
)
def test_missing_markers_raise(tmp_path: Path, body: str):
    readme = tmp_path / "README.md"
    readme.write_text(body, encoding="utf-8")
    with pytest.raises(BbuError, match="no config reference block"):
        write_reference(readme)
    assert readme.read_text(encoding="utf-8") == body


def test_check_exits_1_when_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\nold\n{END}\n", encoding="utf-8")
    assert _main(["--check", str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stale" in err and REGENERATE in err
    assert _main([str(readme)]) == 0
    assert _main(["--check", str(readme)]) == 0
