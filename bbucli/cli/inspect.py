"""`bbu inspect FILE.jsonl`: parse options, call the `bbucli.inspection` views, render them as
Rich tables (or one JSON object with --json)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out
from bbucli.errors import DataError

if TYPE_CHECKING:  # the views import torch; `bbu --help` must not
    from bbucli.inspection.episode import EpisodeDetail
    from bbucli.inspection.render import RenderResult
    from bbucli.inspection.source import InspectOptions
    from bbucli.inspection.summary import DatasetSummary
    from bbucli.inspection.tensors import TensorsView
    from bbucli.inspection.tokens import TextTokens, TokenStream

PROBLEMS_SHOWN = 20
SEGMENTS = {0: ("prompt", "dim"), 1: ("teacher answer", "cyan"), 2: ("student answer", "green")}


class Lang(str, Enum):
    zh = "zh"
    en = "en"


HELP = """Inspect a teacher/student JSONL before spending GPU hours: tokens, budget, batching, tensors.

Default view, the whole file: episodes, images, objects per class, tokens per episode (min / median / p95 / max) split into text / vision / answer, how many episodes exceed --max-tokens, and the padding of standard batches of --batch-size (in file order and length-sorted) against packed bins of --batch-tokens. Counts are exactly what training's ChatProcessor produces, read from image headers without decoding pixels.

--index I shows the I-th record (0-based, blank lines skipped) turn by turn; --tensors, --tokens and --render show that record too (index 0 when --index is not given). --text STRING shows a string's token ids and pieces. --json prints the views asked for as one JSON object.

Bad input does not stop the summary: a line that is not an episode, a missing or unreadable image and an episode over --max-tokens are listed as FILE:LINE problems and the rest of the file is inspected. Exit code 0 when the file was inspected, even with problems; 1 when nothing in it could be inspected, or the record asked for with --index cannot be; 2 for bad options.

[bold]Examples[/]

[cyan]bbu inspect runs/demo/data.jsonl[/]

[cyan]bbu inspect data.jsonl --max-tokens 3072 --batch-tokens 8192 --batch-size 8[/]

[cyan]bbu inspect data.jsonl --index 3 --tokens[/]  (the token stream, answers coloured)

[cyan]bbu inspect data.jsonl --index 3 --tensors --batch-size 2[/]

[cyan]bbu inspect data.jsonl --index 3 --render ep3.png[/]

[cyan]bbu inspect data.jsonl --text "连接点（螺丝）" --model /models/Qwen2.5-VL-7B-Instruct[/]

[cyan]bbu inspect data.jsonl --json > summary.json[/]
"""


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _summary_tables(s: DatasetSummary) -> list[Table]:
    table = Table(title=f"bbu inspect {s.path}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    bad = len({p.line for p in s.problems if p.kind != "over_budget"})
    table.add_row("records", f"{s.records}: {s.episodes} inspected, {bad} unreadable")
    per = s.teachers / s.episodes if s.episodes else 0.0
    table.add_row("episodes", f"{s.episodes}, {s.teachers} teacher turns ({per:.2f} per episode)")
    table.add_row(
        "images",
        f"{s.images} distinct, {s.image_refs} referenced; {s.images_resized} not at the "
        "smart_resize fixed point (resized when training)",
    )
    v = s.vision_per_image
    table.add_row("vision tokens/image", f"min {v.min} / median {v.median:g} / max {v.max}")
    table.add_row(
        "objects",
        f"{s.student_objects} in student answers, {s.teacher_objects} in teacher answers, "
        f"{len(s.classes)} classes",
    )
    t = s.tokens
    budget = f"max_tokens {s.max_tokens}" if s.max_tokens else "no budget"
    table.add_row(
        "tokens/episode",
        f"min {t.min} / median {t.median:g} / p95 {t.p95} / max {t.max} "
        f"(the {t.count} episodes within {budget})",
    )
    shares = s.token_split.shares
    table.add_row(
        "token split",
        f"text {_pct(shares['text'])} / vision {_pct(shares['vision'])} / "
        f"answer {_pct(shares['answer'])} of {s.token_split.total:,}",
    )
    if s.max_tokens:
        table.add_row(
            f"over max_tokens {s.max_tokens}",
            f"{s.over_budget}: {s.teachers_dropped} lose teachers, {s.skipped} skipped",
        )
    table.add_row("counted with", f"model {s.model}, prompts in {s.lang}")
    rate = s.episodes / s.seconds if s.seconds > 0 else 0.0
    table.add_row("time", f"{s.seconds:.2f} s ({rate:,.0f} episodes/s, no pixel decoded)")
    return [table, _batching_table(s), _classes_table(s)]


def _batching_table(s: DatasetSummary) -> Table:
    b = s.batching
    table = Table(title=f"batching the {b.samples} episodes within budget")
    for column, justify in (("layout", "left"), ("rows", "right"), ("padding", "right")):
        table.add_column(column, justify=justify)
    table.add_column("note", overflow="fold")
    table.add_row(
        f"standard B={b.batch_size}, file order",
        str(b.standard_batches),
        _pct(b.standard_pad_file_order),
        "pad tokens (each batch padded to its longest)",
    )
    table.add_row(
        f"standard B={b.batch_size}, length-sorted",
        str(b.standard_batches),
        _pct(b.standard_pad_sorted),
        "pad tokens",
    )
    oversized = f", {b.packed_oversized} over the budget alone" if b.packed_oversized else ""
    table.add_row(
        f"packed, {b.batch_tokens} tokens/bin",
        str(b.packed_bins),
        _pct(b.packed_unused),
        f"budget left unused (rows carry no pad); {b.samples_per_bin:.1f} samples/bin{oversized}",
    )
    return table


def _classes_table(s: DatasetSummary) -> Table:
    table = Table(title="objects per class")
    table.add_column("class")
    table.add_column("student", justify="right")
    table.add_column("teacher", justify="right")
    for c in s.classes:
        table.add_row(c.desc, str(c.student), str(c.teacher))
    return table


def _problems_table(s: DatasetSummary) -> Table:
    kinds: dict[str, int] = {}
    for p in s.problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    counts = ", ".join(f"{k} {n}" for k, n in kinds.items())
    shown = min(PROBLEMS_SHOWN, len(s.problems))
    table = Table(title=f"problems (first {shown} of {len(s.problems)}: {counts})")
    table.add_column("where", overflow="fold")
    table.add_column("kind")
    table.add_column("problem", overflow="fold")
    for p in s.problems[:PROBLEMS_SHOWN]:
        table.add_row(f"{p.path.name}:{p.line}", p.kind, p.message)
    return table


def _wh(wh: tuple[int, int] | None) -> str:
    return f"{wh[0]}x{wh[1]}" if wh else ""


def _detail_table(d: EpisodeDetail) -> Table:
    ident = f", id {d.episode_id}" if d.episode_id else ""
    table = Table(
        title=f"episode {d.index} (line {d.line}{ident})", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("turn", no_wrap=True)
    table.add_column("image", overflow="fold")
    table.add_column("size", no_wrap=True)
    table.add_column("grid", no_wrap=True)
    for column in ("obj", "vision", "text", "answer", "total"):
        table.add_column(column, justify="right", no_wrap=True)
    for t in d.turns:
        size = _wh(t.stored_wh)
        if t.model_wh and t.model_wh != t.stored_wh:
            size += f" -> {_wh(t.model_wh)}"
        table.add_row(
            t.role,
            Path(t.image).name if t.image else "",
            size,
            "x".join(map(str, t.grid_thw)) if t.grid_thw else "",
            str(t.objects) if t.image else "",
            str(t.vision_tokens),
            str(t.text_tokens),
            str(t.answer_tokens),
            str(t.tokens),
        )
    table.add_section()
    table.add_row(
        "all", "", "", "", "", str(d.vision_tokens), str(d.text_tokens), str(d.answer_tokens),
        str(d.tokens), style="bold",
    )  # fmt: skip
    table.caption = (
        "size: stored (-> as the model sees it); grid: t x h/14 x w/14 patches; "
        "answer: segment 1 (teacher) / 2 (student), with its <|im_end|>"
    )
    return table


def _budget_line(d: EpisodeDetail) -> str:
    if d.max_tokens is None:
        return f"{d.tokens} tokens, no budget; the student answer starts at token {d.prompt_end}"
    if d.skipped:
        return (
            f"[yellow]over max_tokens {d.max_tokens} even without teachers: training skips it "
            "(shown without the budget)[/]"
        )
    dropped = f", {d.teachers_dropped} teacher(s) dropped to fit" if d.teachers_dropped else ""
    return (
        f"{d.tokens} of max_tokens {d.max_tokens}{dropped}; "
        f"the student answer starts at token {d.prompt_end}"
    )


def _tensor_tables(v: TensorsView) -> list[Table]:
    tables = []
    for stage in v.stages:
        table = Table(title=stage.stage)
        for column in ("name", "shape", "dtype", "value"):
            table.add_column(column, overflow="fold")
        for t in stage.tensors:
            shape = "(" + ", ".join(map(str, t.shape)) + ")" if t.shape is not None else ""
            shown = t.note if t.note is not None else ("" if t.value is None else str(t.value))
            table.add_row(t.name, shape, t.dtype.removeprefix("torch."), shown)
        tables.append(table)
    return tables


def _token_text(stream: TokenStream) -> Text:
    text = Text()
    for piece in stream.pieces:
        shown = piece.text if piece.repeat == 1 else f"{piece.text}x{piece.repeat}"
        text.append(shown, style=SEGMENTS.get(piece.segment, ("", ""))[1])
    return text


def _legend() -> Text:
    legend = Text("segments: ")
    for name, style in SEGMENTS.values():
        legend.append(name, style=style)
        legend.append("  ")
    return legend


def _text_table(t: TextTokens) -> Table:
    table = Table(title=f"--text: {len(t.ids)} token(s), {t.model} tokenizer")
    table.add_column("#", justify="right")
    table.add_column("id(s)", justify="right")
    table.add_column("piece", overflow="fold")
    for k, piece in enumerate(t.pieces):
        ids = " ".join(map(str, piece.ids)) + (f" x{piece.repeat}" if piece.repeat > 1 else "")
        table.add_row(str(k), ids, repr(piece.text))
    return table


def _render_line(r: RenderResult) -> str:
    line = (
        f"wrote {escape(str(r.path))} ({r.size[0]}x{r.size[1]}): record {r.index} (line {r.line}), "
        f"{len(r.images)} image(s), {r.boxes} boxes; font {r.font.path or 'Pillow built-in'}"
    )
    return line if r.font.cjk else f"{line}\n[yellow]note:[/] {escape(r.font.note)}"


def _summarize(file: Path, options: InspectOptions, quiet: bool) -> DatasetSummary:
    from bbucli.inspection.summary import summarize

    with Progress(
        TextColumn("inspecting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True, disable=quiet,
    ) as bar:  # fmt: skip
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
            "--render", help="Draw the record's images with boxes and labels into this PNG."
        ),
    ] = None,
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
    from bbucli.inspection.episode import describe, process_record
    from bbucli.inspection.render import render_episode
    from bbucli.inspection.source import InspectOptions
    from bbucli.inspection.tensors import tensors_of
    from bbucli.inspection.tokens import stream_of, text_tokens

    options = InspectOptions(
        model=model, lang=lang.value, max_tokens=max_tokens, batch_tokens=batch_tokens,
        batch_size=batch_size,
    )  # fmt: skip
    options.check()
    payload: dict[str, Any] = {}
    show: list[Any] = []
    if text is not None:
        result = text_tokens(text, model)
        payload["text"] = result.to_dict()
        show += [_text_table(result), Text(f"ids: {list(result.ids)}")]
    if index is not None or tensors or tokens or render is not None:
        record = process_record(file, index or 0, options)
        detail = describe(record)
        payload["episode"] = detail.to_dict()
        show += [_detail_table(detail), _budget_line(detail)]
        if tensors:
            view = tensors_of(record, options)
            payload["tensors"] = view.to_dict()
            show += _tensor_tables(view)
            show += [f"[yellow]left out of the batch:[/] {escape(why)}" for why in view.left_out]
        if tokens:
            stream = stream_of(record)
            payload["tokens"] = stream.to_dict()
            show += [_legend(), _token_text(stream)]
        if render is not None:
            drawn = render_episode(file, index or 0, render)
            payload["render"] = drawn.to_dict()
            show.append(_render_line(drawn))
    summary = None
    if not payload:
        summary = _summarize(file, options, quiet=as_json)
        payload["summary"] = summary.to_dict()
        show += _summary_tables(summary)
        if summary.problems:
            show.append(_problems_table(summary))
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
