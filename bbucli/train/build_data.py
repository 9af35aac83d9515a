"""The data side of a run's build steps: the conversation (processor, prompts, the training
classes) and the datasets, and the teachers a checkpoint carries. `bbucli.train.build` runs them
with the model, loss and trainer steps."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from bbucli.data.dataset import EpisodeDataset
from bbucli.schema import Sample
from bbucli.train.config.loading import BbuConfig

if TYPE_CHECKING:
    from bbucli.chat.loading import VLProcessor
    from bbucli.chat.processor import ChatProcessor
    from bbucli.chat.prompts import Prompts
    from bbucli.schema import Episode


@dataclass(frozen=True)
class Conversation:
    """How episodes become model inputs: the processor (pixel limits of `model`), the chat
    processor with the run's prompts, the taxonomy YAML text, and the classes: the descs of the
    train episodes and the teacher pool (`trained_classes`), which the system prompt lists, the
    caption vocabulary spells and the checkpoint keeps as the head's candidates."""

    processor: VLProcessor
    chat: ChatProcessor
    prompts: Prompts
    taxonomy_yaml: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Datasets:
    """The train and val datasets."""

    train: EpisodeDataset
    val: EpisodeDataset | None


def build_conversation(cfg: BbuConfig) -> Conversation:
    """The processor, the taxonomy text (`data.taxonomy` or the built-in one), the classes of
    the training data and the prompts listing them in `data.lang`, and the chat processor that
    renders episodes within `data.max_tokens`."""
    from bbucli.chat.loading import load_processor
    from bbucli.chat.processor import ChatProcessor
    from bbucli.chat.prompts import build_prompts
    from bbucli.taxonomy import Taxonomy, default_path

    model, data = cfg.model, cfg.data
    processor = load_processor(model.path, min_pixels=model.min_pixels, max_pixels=model.max_pixels)
    taxonomy_file = data.taxonomy or default_path()
    Taxonomy.load(taxonomy_file)  # a broken taxonomy fails here, before the model loads
    taxonomy_yaml = Path(taxonomy_file).read_text(encoding="utf-8")
    classes = training_classes(cfg)
    prompts = build_prompts(classes, data.lang, list_classes=data.prompt_classes)
    chat = ChatProcessor(
        processor,
        system_prompt=prompts.system,
        instruction=prompts.instruction,
        max_tokens=data.max_tokens,
        min_pixels=model.min_pixels,
        max_pixels=model.max_pixels,
    )
    return Conversation(processor, chat, prompts, taxonomy_yaml, classes)


def training_classes(cfg: BbuConfig) -> tuple[str, ...]:
    """The descs of the `data.train` episodes and the `data.teachers` pool (`trained_classes`);
    DataError when they hold no object at all (nothing to detect)."""
    from bbucli.chat.prompts import trained_classes
    from bbucli.errors import DataError
    from bbucli.schema import read_episodes

    data = cfg.data
    episodes = _episodes(data.train, "data.train", "regenerate it with `bbu convert`")
    samples = [s for e in episodes for s in e.samples]
    if data.teachers:
        samples += [e.student for e in read_episodes(data.teachers)]
    classes = trained_classes(samples)
    if not classes:
        raise DataError(
            f"{data.train}: no annotated object in the training data or the teacher pool",
            hint="check the bbu convert report: every label may have been dropped as unknown",
        )
    return classes


def load_datasets(cfg: BbuConfig, chat: ChatProcessor) -> Datasets:
    """Read the train, teacher-pool and val JSONL files into datasets (teachers per student:
    `data.num_teachers`; the train set re-draws them from the pool when `data.teacher_resample`)."""
    from bbucli.schema import read_episodes

    data = cfg.data
    episodes = _episodes(data.train, "data.train", "regenerate it with `bbu convert`")
    pool = [e.student for e in read_episodes(data.teachers)] if data.teachers else []
    train = EpisodeDataset(
        episodes,
        chat,
        data.image_root,
        num_teachers=data.num_teachers,
        teacher_pool=pool,
        resample=data.teacher_resample,
        seed=cfg.model.seed,
        name="train",
    )
    val = None
    if data.val is not None:
        hint = (
            "convert with a larger --val-ratio (small sets round it down to no image), or set "
            "data.val=null to train without evaluation"
        )
        val = EpisodeDataset(
            _episodes(data.val, "data.val", hint),
            chat,
            data.image_root,
            num_teachers=data.num_teachers,
            name="val",
        )
    return Datasets(train, val)


def _episodes(path: Path, key: str, hint: str) -> list[Episode]:
    """The episodes of `path`; DataError when it holds none (else the budget check would blame
    data.max_tokens for an empty file)."""
    from bbucli.errors import DataError
    from bbucli.schema import read_episodes

    episodes = read_episodes(path)
    if not episodes:
        raise DataError(f"{key} {path} holds no episodes", hint=hint)
    return episodes


def teachers_to_carry(train: EpisodeDataset, k: int) -> tuple[Sample, ...]:
    """The `k` teachers every checkpoint carries for inference: `inference_teachers` of the
    teacher pool (`data.teachers`; without one, the teachers the train episodes name), image
    paths resolved against the dataset's image root."""
    from bbucli.teachers import inference_teachers

    pool = train.teacher_pool or tuple(t for e in train.episodes for t in e.teachers)
    chosen = inference_teachers(pool, k)
    return tuple(replace(t, images=(str(train.image_root / t.image),)) for t in chosen)
