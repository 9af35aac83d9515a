"""`bbu predict CKPT IMAGES...`: a checkpoint's detections on image files with `predict_images`; the
predictions JSONL to --out (or stdout), pictures to --render, a per-image table; then one `error:`
line per image that could not be predicted, and exit code 1 when there was one."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out
from bbucli.cli.options import DType, Source, check_threshold

STAGES = {"load": "loading the checkpoint", "predict": "predicting", "render": "drawing"}


HELP = """Detect objects in images with a checkpoint written by `bbu train`.

Each image is resized exactly as in training and shown after the checkpoint's own teacher examples (the fixed, label-blind set training saved in CKPT/teachers/), so the prompt has the shape training used; --teachers K keeps the first K, --teachers 0 none. A checkpoint saved before bbu kept teachers predicts without them and says so. Boxes come back in the pixels of the original image as it stands upright (EXIF orientation applied). --source head reads the detection head (class: the most likely class desc under its caption decoder; score = objectness x that class's probability); --source lm generates the grounding answer greedily (score = mean token log-probability of each object's text; unparseable answers are counted).

An image that cannot be read or sized is reported (one error line each) and skipped: the others are predicted and written, and the exit code is 1.

Writes the bbu predictions JSONL (one line per image: image, width, height, objects with bbox_2d, desc, score; source; unparseable; raw for lm) to --out, or to stdout without --out; --render draws the boxes on the images (JPEG).

[bold]Examples[/]

[cyan]bbu predict runs/tiny/checkpoint-100 photos/*.jpeg --out preds.jsonl --render renders/[/]

[cyan]bbu predict ckpt/ a.jpeg --source lm --max-new-tokens 512 > a.jsonl[/]
"""


def _summary(run) -> Table:
    table = Table(title=f"bbu predict ({run.source})")
    table.add_column("image", overflow="fold")
    table.add_column("objects", justify="right")
    table.add_column("max score", justify="right")
    table.add_column("most frequent descs", overflow="fold")
    if run.source == "lm":
        table.add_column("answer")
    for p in run.predictions:
        dets = p.detections
        common = ", ".join(f"{d} x{n}" for d, n in Counter(dets.descs).most_common(3))
        best = f"{dets.scores.max():.3f}" if len(dets) else "-"
        row = [escape(dets.image), str(len(dets)), best, escape(common) or "-"]
        if run.source == "lm":
            row.append("[red]unparseable[/]" if dets.unparseable else "ok")
        table.add_row(*row)
    return table


@app.command("predict", help=HELP)
@handle_errors
def predict_command(
    checkpoint: Annotated[Path, typer.Argument(exists=True, file_okay=False, metavar="CKPT", help="Checkpoint folder written by `bbu train`.")],
    images: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, metavar="IMAGES", help="Image files (JPEG, PNG, ...).")],
    out_file: Annotated[Path | None, typer.Option("--out", "-o", dir_okay=False, help="Predictions JSONL to write (default: stdout).")] = None,
    render: Annotated[Path | None, typer.Option("--render", file_okay=False, help="Folder for the images with their boxes drawn.")] = None,
    source: Annotated[Source, typer.Option("--source", help="head: detection head; lm: the generated answer.")] = Source.head,
    threshold: Annotated[float | None, typer.Option("--threshold", "-t", help="Keep boxes scoring at least this (head: in [0, 1]; lm: a log-probability <= 0; checked).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="At most this many boxes per image, best first.")] = 100,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest generated answer (lm).")] = 1024,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 4,
    device: Annotated[str | None, typer.Option("--device", help="cuda, cuda:1, cpu (default: cuda when available).")] = None,
    dtype: Annotated[DType, typer.Option("--dtype", help="Qwen weights dtype; auto: bf16 on a GPU, else fp32.")] = DType.auto,
    teachers: Annotated[int | None, typer.Option("--teachers", "-k", min=0, help="Teacher examples of the checkpoint to prepend (default: all it stores, the number training used; 0: none).")] = None,
) -> None:
    from bbucli.infer.predict import predict_images

    check_threshold(threshold, source.value)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        run = predict_images(
            checkpoint,
            images,
            out=out_file,
            render_dir=render,
            source=source.value,
            score_threshold=threshold,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=device,
            dtype=None if dtype is DType.auto else dtype.value,
            teachers=teachers,
            progress=progress,
        )
    for note in run.notes:
        err.print(f"[yellow]warning:[/] {escape(note)}", soft_wrap=True)
    if out_file is None:
        for record in run.records:
            typer.echo(json.dumps(record, ensure_ascii=False))
    console = out if out_file is not None else err
    console.print(_summary(run))
    written = [str(run.out)] if run.out is not None else []
    if run.renders:
        written.append(f"{len(run.renders)} picture(s) in {render}")
    console.print(f"teachers: {len(run.teachers)} from the checkpoint")
    if written:
        console.print(f"written: {escape(', '.join(written))}")
    for failure in run.failures:
        err.print(f"[bold red]error:[/] {escape(str(failure))}", soft_wrap=True)
    if run.failures:
        predicted = f"{len(run.predictions)} of {len(run.predictions) + len(run.failures)}"
        err.print(f"[dim]hint:[/] {predicted} images predicted; fix or drop the others", soft_wrap=True)
        raise typer.Exit(1)
