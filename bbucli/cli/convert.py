"""`bbu convert RAW_DIR --out OUT.jsonl`: parse options, run `convert_dataset` with a progress bar, render
its report as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out
from bbucli.cli.options import Lang, Unknown
from bbucli.convert.pipeline import ConvertOptions, IssuesFound, convert_dataset, output_paths
from bbucli.convert.report import ConvertReport
from bbucli.errors import UsageError
from bbucli.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

ISSUES_SHOWN = 15
INTERRUPTED = 130  # the shell's exit status for a command stopped by Ctrl-C (128 + SIGINT)
STAGES = {"read": "reading annotations", "check": "checking images", "resize": "resizing images"}


HELP = """Convert a raw annotation export into teacher/student JSONL for training.

Reads every vendor (markResult / dataList), Labelme and COCO JSON under RAW_DIR, maps labels through the taxonomy, resizes each photo once (EXIF-upright, smart_resize) into OUT_DIR/images/, picks a teacher pool, splits train/val and writes OUT.jsonl (--out, the train split), OUT.val.jsonl, OUT.teachers.jsonl and OUT.report.json. Every problem in the input is counted in the report. OUT may also be given as a second argument (the spelling of bbu 0.1).

[bold]Examples[/]

[cyan]bbu convert examples/raw --out runs/data/bbu.jsonl --teachers 1 --val-ratio 0.2 --lang en[/]

[cyan]bbu convert raw/ -o data/bbu.jsonl --dry-run --strict[/]  (check an export, write nothing)
"""


def _summary(report: ConvertReport, paths: dict[str, Path]) -> Table:
    table = Table(title="bbu convert" + (" (dry run: nothing written)" if report.dry_run else ""), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    formats = ", ".join(f"{k} {v}" for k, v in report.formats.items()) or "none"
    table.add_row("annotation files", f"{report.annotation_files} ({formats})")
    table.add_row("images", f"{report.images_kept} kept of {report.images_found} annotated")
    table.add_row("objects", f"{report.objects_kept} kept of {report.objects_found}")
    for title, counts in (("dropped images", report.dropped_images), ("dropped objects", report.dropped_objects)):
        table.add_row(title, ", ".join(f"{r} {n}" for r, n in counts.items()) or "none")
    table.add_row("issues", ", ".join(f"{r} {n}" for r, n in report.issue_counts.items()) or "none")
    if report.unknown_labels:
        table.add_row("unknown labels", "\n".join(f"{n:>5}  {label}" for label, n in report.unknown_labels.items()))
    table.add_row("teacher pool", ", ".join(report.teacher_pool) or "none")
    table.add_row("split", ", ".join(f"{k} {v}" for k, v in report.split_sizes.items()) or "-")
    if report.warnings:
        table.add_row("warnings", "\n".join(report.warnings), style="yellow")
    if not report.dry_run:
        folder = paths["train"].parent
        names = ", ".join(p.name + ("/" if key == "images" else "") for key, p in paths.items())
        table.add_row("outputs", f"{names}\nin {folder}")
    if report.timing_s:
        table.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in report.timing_s.items()))
    return table


def _labels(report: ConvertReport) -> Table:
    table = Table(title="objects per label")
    table.add_column("label")
    table.add_column("objects", justify="right")
    for desc, n in report.label_counts.items():
        table.add_row(desc, str(n))
    return table


def _issues(report: ConvertReport) -> Table:
    table = Table(title=f"issues (first {min(ISSUES_SHOWN, len(report.issues))} of {len(report.issues)})")
    for column in ("reason", "file", "detail"):
        table.add_column(column, overflow="fold")
    for issue in report.issues[:ISSUES_SHOWN]:
        table.add_row(issue.reason, issue.file, issue.detail)
    return table


def _render(report: ConvertReport, paths: dict[str, Path]) -> None:
    if report.label_counts:
        out.print(_labels(report))
    if report.issues:
        out.print(_issues(report))
    out.print(_summary(report, paths))
    for warning in report.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)


@app.command("convert", help=HELP)
@handle_errors
def convert(
    raw_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, metavar="RAW_DIR", help="Folder with the annotation export (searched recursively).")],
    out_argument: Annotated[Path | None, typer.Argument(metavar="OUT", show_default=False, help="The older spelling of --out.")] = None,
    out_option: Annotated[Path | None, typer.Option("--out", "-o", dir_okay=False, help="Train JSONL to write; siblings .val.jsonl, .teachers.jsonl, .report.json and images/ go beside it.")] = None,
    teachers: Annotated[int, typer.Option("--teachers", "-k", help="Teachers (annotated examples) per student.")] = 1,
    pool: Annotated[int | None, typer.Option("--pool", help="Teacher pool size (default: about a quarter of the images, at most 8).")] = None,
    val_ratio: Annotated[float, typer.Option("--val-ratio", help="Share of non-teacher images for validation.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pool, split and teacher choice.")] = 0,
    min_pixels: Annotated[int, typer.Option("--min-pixels", help="smart_resize lower pixel bound (the model processor's).")] = DEFAULT_MIN_PIXELS,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="smart_resize upper pixel bound (the model processor's).")] = DEFAULT_MAX_PIXELS,
    taxonomy: Annotated[Path | None, typer.Option("--taxonomy", help="Taxonomy YAML (default: the built-in copy of configs/taxonomy/bbu.yaml).")] = None,
    unknown: Annotated[Unknown, typer.Option("--unknown", help="Labels not in the taxonomy: keep as-is, drop, or stop with an error.")] = Unknown.drop,
    lang: Annotated[Lang, typer.Option("--lang", help="Language of the descs written.")] = Lang.zh,
    levels: Annotated[int, typer.Option("--levels", min=1, max=3, help="Desc levels kept: 1 type, 2 type/property, 3 type/property/state.")] = 3,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes resizing images.")] = 1,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1, nothing written) on any issue in the input.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, check and split, but write nothing.")] = False,
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality of the resized images.")] = 95,
) -> None:
    if (out_argument is None) == (out_option is None):
        given = "twice" if out_option is not None else "no output"
        raise UsageError(f"{given}: name the train JSONL to write once, with --out OUT.jsonl", hint="bbu convert RAW_DIR --out OUT.jsonl")
    out_jsonl = out_option or out_argument
    options = ConvertOptions(
        teachers=teachers, pool=pool, val_ratio=val_ratio, seed=seed, min_pixels=min_pixels,
        max_pixels=max_pixels, taxonomy=taxonomy, unknown=unknown.value, lang=lang.value,
        levels=levels, workers=workers, strict=strict, dry_run=dry_run, quality=quality,
    )
    paths = output_paths(out_jsonl)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            report = convert_dataset(raw_dir, out_jsonl, options, progress=progress)
        except IssuesFound as exc:
            bar.stop()
            _render(exc.report, paths)
            raise
        except KeyboardInterrupt:
            # convert_dataset swaps the new dataset in whole or not at all (Ctrl-C is held off
            # during the swap), so an interrupt that reaches here changed nothing.
            bar.stop()
            err.print("interrupted, nothing changed", highlight=False)
            raise typer.Exit(INTERRUPTED) from None
    _render(report, paths)
