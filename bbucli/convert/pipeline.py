"""`convert_dataset`: a raw annotation export -> teacher/student JSONL, resized images, a report.

    discover (read + pair) -> prepare (size check, labels, boxes) -> resize once -> pool + split
    -> OUT.jsonl (train), OUT.val.jsonl, OUT.teachers.jsonl, OUT.report.json, OUT_DIR/images/

The dataset is replaced whole or not at all (`staging`): everything is written into a hidden
staging folder beside OUT and swapped in at the end, so a failed or interrupted (Ctrl-C) run leaves
the previous dataset byte-identical and no staging folder behind. OUT, or a sibling, that is a
folder where a file goes is refused before any work. An input file is never written over: OUT's
`images/` may not be the input folder or any folder holding an input. Outputs hold no timestamps
or absolute paths: the same input and options give byte-identical files. A val split asked for
but left empty (too few images) is a warning in the report.

An `info` size that disagrees with the EXIF-upright image is handled by `frames.reconcile`: boxes
drawn on the pre-EXIF pixels are rotated, boxes drawn on a uniformly scaled preview are rescaled,
anything else drops the image (`size_mismatch`); each case is reported.

`strict`: the run fails with `IssuesFound` (a DataError carrying the report) as soon as reading
and checking found any issue, before any image or JSONL is written. Problems only a full decode
reveals (a JPEG cut in its scan data) surface while resizing; in strict mode the run then fails
before writing any JSONL. `dry_run` reads, checks and splits, but resizes and writes nothing.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from bbucli.convert.discover import Discovery, discover, rel_name
from bbucli.convert.images import resize_to_file
from bbucli.convert.prepare import LabelPolicy, PreparedImage, prepare_image
from bbucli.convert.raw import Issue
from bbucli.convert.report import ConvertReport, Tally
from bbucli.convert.split import ImageSummary, select_teacher_pool, split_train_val
from bbucli.convert.staging import Staging
from bbucli.errors import DataError, UsageError
from bbucli.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from bbucli.schema import Episode, Progress, Sample, write_json_atomic, write_jsonl_atomic
from bbucli.taxonomy import Taxonomy
from bbucli.teachers import draw_teachers

IMAGES_DIR = "images"
DEFAULT_MAX_POOL = 8


@dataclass(frozen=True)
class ConvertOptions:
    """Every knob of `convert`. `pool=None` picks `default_pool_size`; `taxonomy=None` the shipped
    taxonomy; pixel limits are the model processor's (smart_resize)."""

    teachers: int = 1
    pool: int | None = None
    val_ratio: float = 0.1
    seed: int = 0
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    taxonomy: Path | None = None
    unknown: Literal["keep", "drop", "error"] = "drop"
    lang: Literal["zh", "en"] = "zh"
    levels: int = 3
    workers: int = 1
    strict: bool = False
    dry_run: bool = False
    quality: int = 95

    def problems(self) -> list[str]:
        """Every invalid option, as readable strings (empty when all are valid)."""
        checks = [
            (self.teachers >= 0, f"--teachers must be >= 0, got {self.teachers}"),
            (self.pool is None or self.pool >= 0, f"--pool must be >= 0, got {self.pool}"),
            (self.pool is None or self.pool >= self.teachers or self.pool == 0,
             f"--pool ({self.pool}) must be at least --teachers ({self.teachers})"),
            (0.0 <= self.val_ratio < 1.0, f"--val-ratio must be in [0, 1), got {self.val_ratio}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (0 < self.min_pixels <= self.max_pixels,
             f"need 0 < --min-pixels <= --max-pixels, got {self.min_pixels} and {self.max_pixels}"),
            (self.unknown in ("keep", "drop", "error"), f"--unknown must be keep, drop or error, got {self.unknown!r}"),
            (self.lang in ("zh", "en"), f"--lang must be zh or en, got {self.lang!r}"),
            (1 <= self.levels <= 3, f"--levels must be 1, 2 or 3, got {self.levels}"),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (1 <= self.quality <= 100, f"--quality must be 1..100, got {self.quality}"),
        ]
        return [message for ok, message in checks if not ok]

    def to_dict(self) -> dict[str, Any]:
        """The options as the report records them (taxonomy by file name only)."""
        out = asdict(self)
        out["taxonomy"] = self.taxonomy.name if self.taxonomy else None
        del out["workers"], out["dry_run"]  # they do not change what is written
        return out


class IssuesFound(DataError):
    """`strict` run with issues in the input; `report` holds them all (nothing was written)."""

    def __init__(self, message: str, report: ConvertReport) -> None:
        super().__init__(message, hint="fix the input, or rerun without --strict to convert what is usable")
        self.report = report


def default_pool_size(n_images: int, teachers: int) -> int:
    """Teacher pool size when none is given: 0 without teachers, else about a quarter of the
    images, at least `teachers`, at most 8 (enough to cover the common classes)."""
    if teachers == 0:
        return 0
    return max(teachers, min(DEFAULT_MAX_POOL, n_images // 4))


def output_paths(out_jsonl: Path) -> dict[str, Path]:
    """`OUT.jsonl` -> its siblings: train, val, teachers, report, images folder. UsageError when
    OUT is not a `.jsonl` name, or any of them is a folder where a file goes (or the reverse)."""
    if out_jsonl.is_dir():
        raise UsageError(
            f"OUT {out_jsonl} is a folder: OUT names the train JSONL to write",
            hint=f"e.g. bbu convert raw/ --out {out_jsonl / 'bbu.jsonl'}",
        )
    if out_jsonl.suffix != ".jsonl":
        raise UsageError(f"output must end in .jsonl, got {out_jsonl.name}", hint="e.g. bbu convert raw/ data/bbu.jsonl")
    base = out_jsonl.with_suffix("")
    paths = {
        "train": out_jsonl,
        "val": base.with_name(base.name + ".val.jsonl"),
        "teachers": base.with_name(base.name + ".teachers.jsonl"),
        "report": base.with_name(base.name + ".report.json"),
        "images": out_jsonl.parent / IMAGES_DIR,
    }
    for key, path in paths.items():
        is_folder = key == "images"
        if path.exists() and path.is_dir() != is_folder:
            kind, wanted = ("file", "folder") if is_folder else ("folder", "file")
            raise UsageError(
                f"output {path} is a {kind}, and convert writes its {key} {wanted} there",
                hint="move it away, or pick another OUT",
            )
    return paths


def _refuse_images_into_inputs(raw_dir: Path, images_dir: Path, found: Discovery | None = None) -> None:
    """UsageError when OUT's images folder is the input folder, or (given `found`) a folder that
    holds an input file: the resized `<stem>.jpeg` would land among the user's originals and
    could write over them. Folders are compared resolved (a symlink is the folder it names)."""
    target = images_dir.resolve()
    holders: dict[Path, str] = {raw_dir: "is the input folder"} if found is None else {}
    for raw in found.images if found else ():
        for path in (raw.image_path, raw.annotation_path):
            if path is not None:
                holders.setdefault(path.parent, f"holds the input file {rel_name(path, found.root)} of")
    for folder, what in holders.items():
        if folder.resolve() == target:
            raise UsageError(
                f"output images folder {images_dir} {what} {raw_dir}: converting would write over the original photos",
                hint="pick an OUT in another folder, e.g. one beside the input folder",
            )


def _worker_context() -> multiprocessing.context.BaseContext:
    """Fork on Linux: a worker only runs Pillow, so it needs none of this process's state and
    must not pay for re-importing `__main__` (spawn and forkserver children both do, and the
    `bbu` entry point imports torch: ~1 s per worker). Spawn elsewhere (macOS, Windows)."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _resize_all(
    items: list[PreparedImage], images_dir: Path, options: ConvertOptions, progress: Progress | None
) -> list[DataError | None]:
    """Resize every image once into `images_dir/<stem>.jpeg`; per item None or the DataError
    that made it unreadable, in input order whatever the worker count."""
    jobs = [(item.raw.image_path, images_dir / f"{item.stem}.jpeg", item.stored_wh) for item in items]
    results: list[DataError | None] = [None] * len(jobs)
    if options.workers == 1 or len(jobs) < 2:
        for i, (src, dst, wh) in enumerate(jobs):
            try:
                resize_to_file(src, dst, wh, quality=options.quality)
            except DataError as exc:
                results[i] = exc
            if progress:
                progress("resize", i + 1, len(jobs))
        return results
    with ProcessPoolExecutor(options.workers, mp_context=_worker_context()) as pool:
        futures: dict[Future, int] = {
            pool.submit(resize_to_file, src, dst, wh, quality=options.quality): i
            for i, (src, dst, wh) in enumerate(jobs)
        }
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                exc = future.exception()
                if isinstance(exc, DataError):
                    results[futures[future]] = exc
                elif exc is not None:
                    raise exc
                if progress:
                    progress("resize", done, len(jobs))
        except BaseException:
            # Ctrl-C or an error: drop the queued images and wait only for the running ones, so
            # nothing writes into the staging folder after it is removed.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def _summary(item: PreparedImage) -> ImageSummary:
    area = item.stored_wh[0] * item.stored_wh[1]
    fracs = tuple((o.bbox_2d[2] - o.bbox_2d[0]) * (o.bbox_2d[3] - o.bbox_2d[1]) / area for o in item.objects)
    return ImageSummary(item.stem, tuple(o.desc for o in item.objects), fracs)


def _sample(item: PreparedImage) -> Sample:
    return Sample(images=(f"{IMAGES_DIR}/{item.stem}.jpeg",), objects=item.objects)


def _source(item: PreparedImage) -> dict[str, Any]:
    return {"path": item.source_rel, "width": item.orig_wh[0], "height": item.orig_wh[1]}


def _episode(student: PreparedImage, teachers: list[PreparedImage]) -> Episode:
    meta = {
        "id": student.stem,
        "source": {f"{p.stem}.jpeg": _source(p) for p in (*teachers, student)},
    }
    return Episode(student=_sample(student), teachers=tuple(_sample(t) for t in teachers), meta=meta)


def _split(items: list[PreparedImage], options: ConvertOptions) -> tuple[list[str], dict[str, list[Episode]]]:
    """Pool, split and teacher assignment -> (pool ids, episodes per output). Each student's
    teachers are the epoch-0 `draw_teachers` of its id: never chosen by its labels."""
    by_id = {item.stem: item for item in items}
    summaries = [_summary(item) for item in items]
    wanted = options.pool if options.pool is not None else default_pool_size(len(items), options.teachers)
    pool_ids = select_teacher_pool(summaries, min(wanted, max(len(items) - 1, 0)), options.seed)
    pool_set = set(pool_ids)
    train_ids, val_ids = split_train_val([i for i in by_id if i not in pool_set], options.val_ratio, options.seed)

    def episodes(ids: list[str]) -> list[Episode]:
        out = []
        for sid in ids:
            chosen = draw_teachers(sid, pool_ids, options.teachers, seed=options.seed)
            out.append(_episode(by_id[sid], [by_id[t] for t in chosen]))
        return out

    teachers = [_episode(by_id[t], []) for t in sorted(pool_ids)]
    return list(pool_ids), {"train": episodes(train_ids), "val": episodes(val_ids), "teachers": teachers}


def _check(found: Discovery, policy: LabelPolicy, options: ConvertOptions, tally: Tally, progress: Progress | None) -> list[PreparedImage]:
    """Every paired image through `prepare_image`; the ones that survive, in discovery order."""
    root = found.root
    prepared: list[PreparedImage] = []
    for i, raw in enumerate(found.images):
        ann_rel, image_rel = rel_name(raw.annotation_path, root), rel_name(raw.image_path, root)
        item = prepare_image(raw, ann_rel, image_rel, policy, options.min_pixels, options.max_pixels, tally)
        if item is not None:
            prepared.append(item)
        if progress:
            progress("check", i + 1, len(found.images))
    return prepared


def _drop_unreadable(items: list[PreparedImage], failures: list[DataError | None], tally: Tally) -> list[PreparedImage]:
    """The images that resized; the others become `unreadable_image` issues."""
    kept = []
    for item, exc in zip(items, failures, strict=True):
        if exc is None:
            kept.append(item)
        else:
            detail = exc.message.replace(str(item.raw.image_path), item.source_rel)
            tally.note(Issue("unreadable_image", item.source_rel, detail, len(item.objects), True))
    return kept


def convert_dataset(
    raw_dir: str | Path,
    out_jsonl: str | Path,
    options: ConvertOptions | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert the export under `raw_dir` into `out_jsonl` and its siblings (module docstring).

    progress: called as `progress(stage, done, total)`, stage in read, check, resize.
    Raises UsageError (bad options), ConfigError (taxonomy), DataError (`unknown="error"`, no
    usable image), IssuesFound (`strict` with issues).
    """
    options = options or ConvertOptions()
    if problems := options.problems():
        raise UsageError("; ".join(problems), hint="see bbu convert --help")
    raw_dir = Path(raw_dir)
    paths = output_paths(Path(out_jsonl))
    taxonomy = Taxonomy.load(options.taxonomy)
    _refuse_images_into_inputs(raw_dir, paths["images"])
    staging = None if options.dry_run else Staging(paths)
    try:
        return _convert(raw_dir, paths, options, taxonomy, staging, progress)
    except BaseException:  # an error or Ctrl-C: the previous dataset stays as it was
        if staging is not None:
            staging.discard()
        raise


def _convert(
    raw_dir: Path,
    paths: dict[str, Path],
    options: ConvertOptions,
    taxonomy: Taxonomy,
    staging: Staging | None,
    progress: Progress | None,
) -> ConvertReport:
    """`convert_dataset` after its checks: read, check, resize into `staging`, split, write, swap
    the staged dataset in (no staging: a dry run, nothing written)."""
    policy = LabelPolicy(taxonomy, options.lang, options.levels, options.unknown)
    clock = _Clock()
    found = discover(raw_dir, exclude=paths.values(), progress=progress)
    _refuse_images_into_inputs(raw_dir, paths["images"], found)
    tally = Tally()
    for issue in found.issues:
        tally.note(issue)
    tally.objects_found = sum(i.objects_dropped for i in found.issues)
    clock.lap("read")
    prepared = _check(found, policy, options, tally, progress)
    clock.lap("check")

    def report(items: list[PreparedImage], pool: list[str] | None = None, sizes: dict[str, int] | None = None) -> ConvertReport:
        return tally.freeze(
            warnings=_split_warnings(options, pool or [], sizes or {}),
            annotation_files=found.annotation_files,
            formats=found.formats,
            images_found=found.images_found,
            images_kept=len(items),
            objects_kept=sum(len(item.objects) for item in items),
            label_counts=Counter(o.desc for item in items for o in item.objects),
            teacher_pool=tuple(pool or ()),
            split_sizes=sizes or {},
            outputs={k: p.name + ("/" if k == "images" else "") for k, p in paths.items()},
            options=options.to_dict(),
            taxonomy={"file": taxonomy.source, "sha256": taxonomy.sha256},
            dry_run=options.dry_run,
            timing_s=clock.rounded(),
        )

    if options.strict and tally.issues:
        raise IssuesFound(f"--strict: {len(tally.issues)} issue(s) in the input: {tally.summary()}", report(prepared))
    if not prepared and not options.dry_run:
        reason = tally.summary() if tally.issues else "nothing to convert"
        raise DataError(
            f"no usable image under {raw_dir}: {reason}",
            hint="run with --dry-run to list every issue; the folder should hold <stem>.json + <stem>.jpeg pairs",
        )
    if staging is not None:
        failures = _resize_all(prepared, staging.path("images"), options, progress)
        prepared = _drop_unreadable(prepared, failures, tally)
        clock.lap("resize")
        if options.strict and any(f is not None for f in failures):
            raise IssuesFound(f"--strict: {tally.summary()}", report(prepared))
        if not prepared:
            raise DataError(f"no image under {raw_dir} could be decoded: {tally.summary()}", hint="re-export the images")

    pool, episodes = _split(prepared, options)
    clock.lap("split")
    final = report(prepared, pool, {name: len(eps) for name, eps in episodes.items()})
    if staging is None:
        return final
    for name in ("teachers", "val", "train"):
        write_jsonl_atomic(staging.path(name), episodes[name])
    write_json_atomic(staging.path("report"), final.to_dict())
    staging.commit()
    clock.lap("write")
    return replace(final, timing_s=clock.rounded())


def _split_warnings(options: ConvertOptions, pool: list[str], sizes: dict[str, int]) -> tuple[str, ...]:
    """What the split leaves that training will trip over: a val split asked for but empty."""
    if options.val_ratio > 0 and sizes and not sizes.get("val"):
        left = sizes.get("train", 0)
        return (
            f"the val split is empty: {left} image(s) left besides the teacher pool of {len(pool)}, "
            "too few to split, so training has no validation set; add images, or lower --pool",
        )
    return ()


class _Clock:
    """Seconds per stage, for the terminal (never written to the report file)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = now - self._t0
        self._t0 = now

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.laps.items()}
