"""What every training step reads: the JSONL episodes as a torch Dataset and its per-epoch batches.

`EpisodeDataset` holds the episodes of one split and turns item i into a `ChatProcessorOutput`
lazily (pixels are decoded in `__getitem__`, in the DataLoader's workers). Token lengths come from
`ChatProcessor.measure` (image headers and text only), so building the dataset decodes nothing.
An episode whose student alone exceeds `data.max_tokens` is left out and counted
(`skipped_too_long`); teachers over the budget are dropped by the ChatProcessor and counted.
A box reaching past its stored image (x2 > width or y2 > height, read from the image header)
refuses the split with a DataError counting them (`check_boxes_inside`): such a target lies
outside the normalised [0, 1] frame the loss works in.

An image whose header reads but whose pixels do not decode (a truncated JPEG) is met only when its
sample is drawn: `__getitem__` then returns an `UnreadableSample`, `SkipUnreadable` (the
collate function) drops it from the batch and lists it in `batch["unreadable"]`, and the Trainer
counts it and stops the run past `unreadable_limit`.

Teacher re-draw (`data.teacher_resample`): epoch 0 keeps the teachers the JSONL names (what
`bbu convert` drew, cut to `num_teachers`); every later epoch draws `num_teachers` teachers per
student from the pool (`data.teachers`) with `bbucli.teachers.draw_teachers`, keyed by (seed,
epoch, student image, pool image) and blind to the student's labels, so every rank and a resumed
run draw the same. `set_epoch(e)` makes the draw; lengths, skips and bins follow it. The draw
happens in the process that calls `set_epoch`: DataLoader workers that persist across epochs
would keep the first epoch's, so the config refuses persistent workers with a re-draw.

`EpochBatches` is the DataLoader's batch sampler: token-budget bins (`TokenBudgetBatchSampler`,
packed rows) or fixed-size batches (padded rows), in an order that is a pure function of
(seed, epoch), sharded over ranks. Padded batches may be grouped by length (`data.group_by_length`):
the shuffled order is cut into windows of GROUP_WINDOW batches, each window sorted by token count
and cut into batches, and the batches shuffled again, so a batch holds samples of similar length
(little padding) while every epoch still mixes the whole split. Its length is fixed at epoch 0 (the Trainer reads it once):
an epoch whose re-drawn teachers give more bins is cut, one with fewer repeats bins from its
start. The Trainer calls `set_epoch` at the start of each epoch (also the resumed one), which is
what makes a resumed run see exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset

from bbucli.chat.processor import ChatProcessor, ChatProcessorOutput
from bbucli.data.sampler import TokenBudgetBatchSampler
from bbucli.errors import DataError
from bbucli.schema import Episode, Sample, objects_outside, outside_image
from bbucli.teachers import draw_teachers


@dataclass(frozen=True)
class DatasetStats:
    """Counts of one epoch's draw. episodes: in the file; samples: kept; skipped_too_long: students
    alone over max_tokens; teachers_dropped: teachers the budget removed; tokens / vision_tokens:
    totals of the kept samples (from `measure`)."""

    episodes: int
    samples: int
    skipped_too_long: int
    teachers_dropped: int
    tokens: int
    vision_tokens: int


class EpisodeDataset(Dataset):
    """Episodes of one split as `ChatProcessorOutput`s (see the module docstring).

    episodes: read with `read_episodes`; image_root: the folder image paths are relative to;
    teacher_pool: the pool samples re-drawn from (`resample`); num_teachers: teachers per student
    (the JSONL's are cut to it); seed: of the re-draw.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        processor: ChatProcessor,
        image_root: str | Path,
        *,
        num_teachers: int = 1,
        teacher_pool: Sequence[Sample] = (),
        resample: bool = False,
        seed: int = 0,
        name: str = "train",
    ) -> None:
        if resample and not teacher_pool:
            raise DataError(
                f"{name}: teacher re-draw needs a teacher pool, and it is empty",
                hint="set data.teachers to the OUT.teachers.jsonl written by `bbu convert`",
            )
        self.episodes = [_cut_teachers(e, num_teachers) for e in episodes]
        self.processor = processor
        self.image_root = Path(image_root)
        self.num_teachers = num_teachers
        self.teacher_pool = tuple(teacher_pool)
        self.resample = resample
        self.seed = seed
        self.name = name
        self.epoch = -1
        self._current: list[Episode] = []
        self._lengths: list[int] = []
        self._vision: list[int] = []
        self.stats = DatasetStats(0, 0, 0, 0, 0, 0)
        pool = self.teacher_pool if resample else ()
        check_boxes_inside(
            [s for e in self.episodes for s in e.samples] + list(pool), processor, image_root, name
        )
        self.set_epoch(0)
        if not self._current:
            raise DataError(
                f"{name}: none of the {len(self.episodes)} episodes fits data.max_tokens "
                f"({processor.max_tokens})",
                hint="raise data.max_tokens, or convert with a smaller --max-pixels",
            )

    def set_epoch(self, epoch: int) -> None:
        """Draw the teachers of `epoch` (a no-op without re-draw after the first call) and measure."""
        if epoch == self.epoch or (self.epoch >= 0 and not self.resample):
            self.epoch = epoch
            return
        self.epoch = epoch
        drawn = self.episodes
        if self.resample and epoch > 0:
            drawn = [
                replace(
                    e,
                    teachers=redraw_teachers(
                        e.student, self.teacher_pool, self.num_teachers, seed=self.seed, epoch=epoch
                    ),
                )
                for e in self.episodes
            ]
        kept, lengths, vision, counts = [], [], [], Counter()
        for episode in drawn:
            budget = self.processor.measure(episode, self.image_root)
            if not budget.fits:
                counts["skipped"] += 1
                continue
            counts["dropped"] += budget.teachers_dropped
            kept.append(episode)
            lengths.append(budget.tokens)
            vision.append(budget.vision_tokens)
        self._current, self._lengths, self._vision = kept, lengths, vision
        self.stats = DatasetStats(
            episodes=len(drawn),
            samples=len(kept),
            skipped_too_long=counts["skipped"],
            teachers_dropped=counts["dropped"],
            tokens=sum(lengths),
            vision_tokens=sum(vision),
        )

    @property
    def current(self) -> tuple[Episode, ...]:
        """The episodes of the current epoch's draw that fit, in index order."""
        return tuple(self._current)

    def lengths(self) -> list[int]:
        """Token count of every sample of the current epoch, in index order."""
        return list(self._lengths)

    def __len__(self) -> int:
        return len(self._current)

    def __getitem__(self, index: int) -> ChatProcessorOutput | UnreadableSample:
        """The sample as tensors, or an `UnreadableSample` when its images cannot be read or
        decoded now (a truncated file passes the header reads made at construction)."""
        episode = self._current[index]
        try:
            out = self.processor.process_sample(episode, self.image_root)
        except DataError as exc:
            return UnreadableSample(index, episode.student.image, exc.message)
        if out is None:  # measure said it fits; process_sample plans the same way
            raise DataError(f"{self.name}: sample {index} no longer fits data.max_tokens")
        return out

    def stand_in(self) -> ChatProcessorOutput:
        """The first sample (in index order) that can be read: what a batch whose every sample is
        unreadable trains on, so that every rank still takes the step."""
        for index in range(len(self._current)):
            out = self[index]
            if isinstance(out, ChatProcessorOutput):
                return out
        raise DataError(
            f"{self.name}: no sample of {len(self._current)} has readable images",
            hint="`bbu inspect FILE --verify-images` lists the unreadable ones by line",
        )


@dataclass(frozen=True)
class UnreadableSample:
    """What `EpisodeDataset[index]` gives for an episode whose images cannot be read or decoded:
    image: its student image (as in the JSONL); reason: the error, naming the file."""

    index: int
    image: str
    reason: str


#: Unreadable samples a run tolerates: more than max(UNREADABLE_MIN, 1% of the split) stop it.
UNREADABLE_MIN = 10


def unreadable_limit(samples: int) -> int:
    """How many distinct unreadable samples a split of `samples` may have before training stops."""
    return max(UNREADABLE_MIN, samples // 100)


class SkipUnreadable:
    """A collate function around `collate`: drops the `UnreadableSample`s of a batch and lists
    them in `batch["unreadable"]` (a tuple of (image, reason)), where the Trainer counts them; a
    batch with nothing readable is made of `dataset.stand_in()` instead. Runs in the DataLoader
    workers, so the counts travel with the batch."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], dataset: EpisodeDataset):
        self.collate = collate
        self.dataset = dataset

    def __call__(self, items: Sequence[ChatProcessorOutput | UnreadableSample]) -> dict[str, Any]:
        samples = [x for x in items if isinstance(x, ChatProcessorOutput)]
        skipped = tuple((x.image, x.reason) for x in items if isinstance(x, UnreadableSample))
        batch = self.collate(samples or [self.dataset.stand_in()])
        if skipped:
            batch["unreadable"] = skipped
        return batch


BOXES_SHOWN = 3  # images a check_boxes_inside error lists


def check_boxes_inside(
    samples: Sequence[Sample], processor: ChatProcessor, image_root: str | Path, name: str
) -> None:
    """DataError counting the boxes of `samples` that reach past their stored image (size from
    the image header, cached by `processor`; x2 == width is inside), naming the first images."""
    seen: set[Sample] = set()
    found: list[str] = []
    boxes = 0
    for sample in samples:
        if sample in seen:
            continue
        seen.add(sample)
        info = processor.image_info(Path(image_root) / sample.image)
        outside = objects_outside(sample.objects, *info.stored_wh)
        if outside:
            boxes += len(outside)
            found.append(outside_image(sample.image, *info.stored_wh, outside))
    if found:
        more = f"; and {len(found) - BOXES_SHOWN} more image(s)" if len(found) > BOXES_SHOWN else ""
        raise DataError(
            f"{name}: {boxes} box(es) outside their image, in {len(found)} image(s): "
            + "; ".join(found[:BOXES_SHOWN])
            + more,
            hint="bbox_2d are pixels of the stored image (x2 <= width, y2 <= height); "
            "`bbu inspect` lists them by line; fix them, or regenerate the JSONL with `bbu convert`",
        )


def redraw_teachers(
    student: Sample, pool: Sequence[Sample], k: int, *, seed: int, epoch: int
) -> tuple[Sample, ...]:
    """`min(k, candidates)` teachers for `student` from `pool` (never its own image), drawn by
    `draw_teachers` on image paths: the student's objects are not read."""
    by_image = {t.image: t for t in pool}
    drawn = draw_teachers(student.image, by_image, k, seed=seed, epoch=epoch)
    return tuple(by_image[i] for i in drawn)


def _cut_teachers(episode: Episode, k: int) -> Episode:
    return (
        episode if len(episode.teachers) <= k else replace(episode, teachers=episode.teachers[:k])
    )


GROUP_WINDOW = 16  # batches per length-sorting window (data.group_by_length)


class EpochBatches:
    """Batch sampler over an `EpisodeDataset` (see the module docstring).

    packed: token-budget bins of at most `max_tokens_per_batch` tokens (one packed row each);
    else `batch_size` samples per batch, in a shuffled order (grouped by length within windows
    when `group_by_length`). shuffle: per-epoch order from
    `seed + epoch` (evaluation passes False). num_replicas / rank: each rank takes every
    num_replicas-th batch; every rank gets the same number of batches.
    """

    def __init__(
        self,
        dataset: EpisodeDataset,
        *,
        packed: bool,
        max_tokens_per_batch: int,
        batch_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        group_by_length: bool = False,
    ) -> None:
        self.dataset = dataset
        self.packed = packed
        self.group_by_length = group_by_length
        self.max_tokens_per_batch = max_tokens_per_batch
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._length = len(self._all_batches())

    def set_epoch(self, epoch: int) -> None:
        """Re-draw the dataset's teachers for `epoch` and order its batches."""
        self.epoch = epoch
        self.dataset.set_epoch(epoch)

    def _all_batches(self) -> list[list[int]]:
        """This rank's batches of the dataset's current draw, in this epoch's order."""
        lengths = self.dataset.lengths()
        if self.packed:
            sampler = TokenBudgetBatchSampler(
                lengths,
                self.max_tokens_per_batch,
                seed=self.seed,
                shuffle=self.shuffle,
                num_replicas=self.num_replicas,
                rank=self.rank,
            )
            sampler.set_epoch(self.epoch)
            return list(sampler)
        order = list(range(len(lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        if self.group_by_length:
            window = GROUP_WINDOW * self.batch_size
            order = [
                i
                for start in range(0, len(order), window)
                for i in sorted(order[start : start + window], key=lambda i: (-lengths[i], i))
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group_by_length and self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1 and batches:
            total = -(-len(batches) // self.num_replicas) * self.num_replicas
            batches = (batches * (total // len(batches) + 1))[:total]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        if not batches:
            return iter(())
        # Fixed length (see the module docstring): cut, or repeat from the start.
        return iter((batches * (self._length // len(batches) + 1))[: self._length])

    def __len__(self) -> int:
        return self._length


class EpochDataLoader(DataLoader):
    """A DataLoader whose `set_epoch` reaches its `EpochBatches` (the Trainer calls it per epoch)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
