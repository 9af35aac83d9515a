"""inspect counts the system prompt training sends: the classes of the dataset (its train JSONL and
teacher pool, cut to --levels), not the taxonomy's full list."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbucli.chat.prompts import trained_classes
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.inspection.source import InspectOptions, chat_processor, dataset_classes
from bbucli.inspection.summary import summarize
from bbucli.schema import read_episodes
from bbucli.taxonomy import Taxonomy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "raw"


@pytest.fixture(scope="module")
def two_levels(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("levels2") / "bbu.jsonl"
    convert_dataset(EXAMPLES, out, ConvertOptions(val_ratio=0.25, levels=2))
    return out


def listed(system_prompt: str) -> tuple[str, ...]:
    return tuple(line[2:] for line in system_prompt.splitlines() if line.startswith("- "))


def test_every_file_of_a_dataset_lists_the_training_classes(two_levels) -> None:
    files = [two_levels, two_levels.with_name("bbu.teachers.jsonl")]
    expected = trained_classes(s for f in files for e in read_episodes(f) for s in e.samples)
    full = set(Taxonomy.load(None).descs("zh"))
    assert expected and not set(expected) <= full  # two-level names are not taxonomy descs
    for name in ("bbu.jsonl", "bbu.val.jsonl", "bbu.teachers.jsonl"):
        path = two_levels.with_name(name)
        assert dataset_classes(path) == expected
        assert listed(chat_processor(InspectOptions(), source=path).system_prompt) == expected


def test_the_summary_counts_that_prompt(two_levels) -> None:
    """Fewer (shorter) classes than the taxonomy's 22: the counted episodes are shorter than with
    the taxonomy's prompt, by the same number of tokens each."""
    ours = summarize(two_levels, InspectOptions(max_tokens=None))
    chat = chat_processor(InspectOptions(max_tokens=None))  # no source: the taxonomy's list
    theirs = sorted(chat.measure(e, two_levels.parent).tokens for e in read_episodes(two_levels))
    assert ours.tokens.count == len(theirs)
    gap = theirs[0] - ours.tokens.min
    assert gap > 0 and theirs[-1] - ours.tokens.max == gap
