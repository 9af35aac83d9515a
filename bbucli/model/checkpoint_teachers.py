"""The teacher examples a checkpoint carries (teachers/): the images inference prepends, copied
beside a teachers.jsonl that names them relative to it, and read back with absolute paths."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from bbucli.errors import ModelError
from bbucli.model.checkpoint_layout import RETRAIN_HINT, TEACHERS_DIR
from bbucli.schema import Episode, Sample, read_episodes, write_jsonl_atomic

TEACHERS_FILE = f"{TEACHERS_DIR}/teachers.jsonl"
TEACHER_IMAGES = "images"  # inside teachers/


def save_teachers(teachers: Sequence[Sample], folder: Path) -> None:
    """Copy each teacher's image into `folder/images/` (its own name; numbered when names repeat)
    and write `folder/teachers.jsonl` naming them relative to `folder`."""
    images = folder / TEACHER_IMAGES
    images.mkdir(parents=True)
    records = []
    for i, sample in enumerate(teachers):
        name = Path(sample.image).name
        if (images / name).exists():
            name = f"{i}_{name}"
        shutil.copyfile(sample.image, images / name)
        kept = Sample(images=(f"{TEACHER_IMAGES}/{name}",), objects=sample.objects)
        records.append(Episode(student=kept, meta={"id": Path(sample.image).stem}))
    write_jsonl_atomic(folder / Path(TEACHERS_FILE).name, records)


def checkpoint_teachers(folder: str | Path) -> tuple[Sample, ...] | None:
    """The teachers saved in checkpoint `folder` (teachers/teachers.jsonl), in prompt order, image
    paths absolute; None for a checkpoint saved without them (written before bbu kept them).
    Raises SchemaError for a damaged teachers.jsonl, ModelError for a missing image."""
    file = Path(folder) / TEACHERS_FILE
    if not file.is_file():
        return None
    samples = []
    for episode in read_episodes(file):
        image = (file.parent / episode.student.image).absolute()
        if not image.is_file():
            raise ModelError(
                f"{file} names {episode.student.image}, which is not in {file.parent}",
                hint=f"the checkpoint is incomplete; {RETRAIN_HINT}",
            )
        samples.append(Sample(images=(str(image),), objects=episode.student.objects))
    return tuple(samples)
