"""`bbu inspect FILE.jsonl`: parse options, call the `bbucli.inspection` views, render them as
Rich tables (or one JSON object with --json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out
from bbucli.cli.inspect_views import (
    PROBLEMS_SHOWN,
    SEGMENTS,
    budget_line,
    detail_table,
    legend,
    problems_table,
    render_line,
    summary_tables,
    tensor_tables,
    text_table,
    token_text,
)
from bbucli.cli.options import Lang
from bbucli.errors import DataError

__all__ = ["inspect", "HELP", "Lang", "PROBLEMS_SHOWN", "SEGMENTS"]

if TYPE_CHECKING:  # the views import torch; `bbu --help` must not
    from bbucli.inspection.source import InspectOptions
    from bbucli.inspection.summary import DatasetSummary


HELP = """Inspect a teacher/student JSONL before spending GPU hours: tokens, budget, batching, tensors.

Default view, the whole file: episodes, images, objects per class, tokens per episode (min / median / p95 / max) split into text / vision / answer, how many episodes exceed --max-tokens, and the padding of standard batches of --batch-size (in file order and length-sorted) against packed bins of --batch-tokens. Counts are exactly what training's ChatProcessor produces, read from image headers without decoding pixels; --verify-images also decodes every image as training does (slower), which finds truncated or corrupt files (training skips their samples, and stops past max(10, 1%) of them).

--index I shows the I-th record (0-based, blank lines skipped) turn by turn; --tensors, --tokens and --render show that record too (index 0 when --index is not given). --render DIR draws it into DIR/<file stem>-<I>.png (a path ending in .png is taken as the picture itself); the place is checked writable before anything is read. --text STRING shows a string's token ids and pieces. --json prints the views asked for as one JSON object.

Bad input does not stop the summary: a line that is not an episode (or not UTF-8 text), a missing or unreadable image, an image path leaving the JSONL's folder (absolute or ../), a box reaching past its image (training refuses it) and an episode over --max-tokens are listed as FILE:LINE problems and the rest of the file is inspected. Exit code 0 when the file was inspected, even with problems; 1 when nothing in it could be inspected, or the record asked for with --index cannot be; 2 for bad options.

[bold]Examples[/]

[cyan]bbu inspect runs/demo/data.jsonl[/]

[cyan]bbu inspect data.jsonl --max-tokens 3072 --batch-tokens 8192 --batch-size 8[/]

[cyan]bbu inspect data.jsonl --index 3 --tokens[/]  (the token stream, answers coloured)

[cyan]bbu inspect data.jsonl --index 3 --tensors --batch-size 2[/]

[cyan]bbu inspect data.jsonl --index 3 --render renders/[/]  (renders/data-3.png)

[cyan]bbu inspect data.jsonl --verify-images[/]  (decode every image: finds truncated files)

[cyan]bbu inspect data.jsonl --text "连接点（螺丝）" --model /models/Qwen2.5-VL-7B-Instruct[/]

[cyan]bbu inspect data.jsonl --json > summary.json[/]
"""


def _summarize(file: Path, options: InspectOptions, quiet: bool) -> DatasetSummary:
    from bbucli.inspection.summary import summarize

    with Progress(
        TextColumn("inspecting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    ) as bar:
        task = bar.add_task("inspect", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return summarize(file, options, progress=progress)


@app.command("inspect", help=HELP)
@handle_errors
def inspect(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="Teacher/student JSONL written by bbu convert (image paths relative to its folder).",
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="'tiny' or a local Qwen2.5-VL folder: whose tokenizer, chat template and pixel limits count.",
        ),
    ] = "tiny",
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens",
            min=1,
            help="Per-sample budget, as data.max_tokens: teachers dropped first, then the episode skipped.",
        ),
    ] = 4096,
    batch_tokens: Annotated[
        int,
        typer.Option(
            "--batch-tokens", min=1, help="Tokens per packed bin, as data.max_tokens_per_batch."
        ),
    ] = 8192,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help="B of the padded batches compared with packing; also the batch of --tensors.",
        ),
    ] = 4,
    index: Annotated[
        int | None,
        typer.Option("--index", min=0, help="Show the I-th record (0-based) turn by turn."),
    ] = None,
    tensors: Annotated[
        bool,
        typer.Option(
            "--tensors",
            help="Every tensor's name/shape/dtype after ChatProcessor and after each collator.",
        ),
    ] = False,
    tokens: Annotated[
        bool,
        typer.Option("--tokens", help="The record's decoded token stream, coloured by segment."),
    ] = False,
    text: Annotated[
        str | None, typer.Option("--text", help="Token ids and pieces of STRING.")
    ] = None,
    render: Annotated[
        Path | None,
        typer.Option(
            "--render",
            help="Folder to draw the record's images with boxes and labels into "
            "(DIR/<file stem>-<index>.png; a path ending in .png: that file).",
        ),
    ] = None,
    verify_images: Annotated[
        bool,
        typer.Option(
            "--verify-images",
            help="Decode every image fully, as training does (slower): finds truncated files.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the views as one JSON object.")
    ] = False,
    lang: Annotated[
        Lang,
        typer.Option(
            "--lang", help="Language of the system prompt and instruction (as data.lang)."
        ),
    ] = Lang.zh,
) -> None:
    from bbucli.evaluation.output_paths import writable_file
    from bbucli.inspection.episode import describe, process_record
    from bbucli.inspection.render import render_episode, render_path
    from bbucli.inspection.source import InspectOptions
    from bbucli.inspection.tensors import tensors_of
    from bbucli.inspection.tokens import stream_of, text_tokens

    options = InspectOptions(
        model=model,
        lang=lang.value,
        max_tokens=max_tokens,
        batch_tokens=batch_tokens,
        batch_size=batch_size,
        verify_images=verify_images,
    )
    options.check()
    picture = None
    if render is not None:  # before any work: a picture that cannot be written is lost work
        picture = writable_file(
            render_path(render, file, index or 0), "--render picture", create=False
        )
    payload: dict[str, Any] = {}
    show: list[Any] = []
    if text is not None:
        result = text_tokens(text, model)
        payload["text"] = result.to_dict()
        show += [text_table(result), Text(f"ids: {list(result.ids)}")]
    if index is not None or tensors or tokens or render is not None:
        record = process_record(file, index or 0, options)
        detail = describe(record)
        payload["episode"] = detail.to_dict()
        show += [detail_table(detail), budget_line(detail)]
        if tensors:
            view = tensors_of(record, options)
            payload["tensors"] = view.to_dict()
            show += tensor_tables(view)
            show += [f"[yellow]left out of the batch:[/] {escape(why)}" for why in view.left_out]
        if tokens:
            stream = stream_of(record)
            payload["tokens"] = stream.to_dict()
            show += [legend(), token_text(stream)]
        if picture is not None:
            drawn = render_episode(file, index or 0, picture)
            payload["render"] = drawn.to_dict()
            show.append(render_line(drawn))
    summary = None
    if not payload:
        summary = _summarize(file, options, quiet=as_json)
        payload["summary"] = summary.to_dict()
        show += summary_tables(summary)
        if summary.problems:
            show.append(problems_table(summary))
    if as_json:
        typer.echo(json.dumps(payload, ensure_ascii=False, indent=2))
    else:
        for item in show:
            out.print(item)
    if summary is not None and summary.episodes == 0:
        raise DataError(
            f"nothing in {file} could be inspected ({len(summary.problems)} problem(s), "
            f"{summary.records} record(s))",
            hint="fix the lines listed, or regenerate the file with `bbu convert`",
        )
    if summary is not None and summary.problems and not as_json:
        out.print(
            f"[yellow]{len(summary.problems)} problem(s)[/]; the rest of the file was inspected"
        )
