"""How `bbu inspect` shows the `bbucli.inspection` views: Rich tables and lines, nothing printed.

Owns one renderer per view (the dataset summary with its batching and class tables, the problems,
an episode turn by turn with its budget line, the tensors, the token stream with its legend, the
tokens of --text, the --render line); `bbucli.cli.inspect` parses the options and prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # the views import torch; `bbu --help` must not
    from bbucli.inspection.episode import EpisodeDetail
    from bbucli.inspection.render import RenderResult
    from bbucli.inspection.summary import DatasetSummary
    from bbucli.inspection.tensors import TensorsView
    from bbucli.inspection.tokens import TextTokens, TokenStream

PROBLEMS_SHOWN = 20
SEGMENTS = {0: ("prompt", "dim"), 1: ("teacher answer", "cyan"), 2: ("student answer", "green")}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary_tables(s: DatasetSummary) -> list[Table]:
    table = Table(title=f"bbu inspect {s.path}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    inspected = ("over_budget", "box_outside_image")  # problems of records still inspected
    bad = len({p.line for p in s.problems if p.kind not in inspected})
    past = sum(1 for p in s.problems if p.kind == "box_outside_image")
    boxes = f", {past} with boxes past their image" if past else ""
    table.add_row("records", f"{s.records}: {s.episodes} inspected, {bad} unreadable{boxes}")
    per = s.teachers / s.episodes if s.episodes else 0.0
    table.add_row("episodes", f"{s.episodes}, {s.teachers} teacher turns ({per:.2f} per episode)")
    table.add_row(
        "images",
        f"{s.images} distinct, {s.image_refs} referenced; {s.images_resized} not at the "
        "smart_resize fixed point (resized when training)",
    )
    table.add_row(
        "pixels",
        f"{s.images_decoded} images decoded as training decodes them"
        if s.images_decoded
        else "not decoded (headers only; --verify-images finds truncated files)",
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


def problems_table(s: DatasetSummary) -> Table:
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


def detail_table(d: EpisodeDetail) -> Table:
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
    )
    table.caption = (
        "size: stored (-> as the model sees it); grid: t x h/14 x w/14 patches; "
        "answer: segment 1 (teacher) / 2 (student), with its <|im_end|>"
    )
    return table


def budget_line(d: EpisodeDetail) -> str:
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


def tensor_tables(v: TensorsView) -> list[Table]:
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


def token_text(stream: TokenStream) -> Text:
    text = Text()
    for piece in stream.pieces:
        shown = piece.text if piece.repeat == 1 else f"{piece.text}x{piece.repeat}"
        text.append(shown, style=SEGMENTS.get(piece.segment, ("", ""))[1])
    return text


def legend() -> Text:
    legend = Text("segments: ")
    for name, style in SEGMENTS.values():
        legend.append(name, style=style)
        legend.append("  ")
    return legend


def text_table(t: TextTokens) -> Table:
    table = Table(title=f"--text: {len(t.ids)} token(s), {t.model} tokenizer")
    table.add_column("#", justify="right")
    table.add_column("id(s)", justify="right")
    table.add_column("piece", overflow="fold")
    for k, piece in enumerate(t.pieces):
        ids = " ".join(map(str, piece.ids)) + (f" x{piece.repeat}" if piece.repeat > 1 else "")
        table.add_row(str(k), ids, repr(piece.text))
    return table


def render_line(r: RenderResult) -> str:
    line = (
        f"wrote {escape(str(r.path))} ({r.size[0]}x{r.size[1]}): record {r.index} (line {r.line}), "
        f"{len(r.images)} image(s), {r.boxes} boxes; font {r.font.path or 'Pillow built-in'}"
    )
    return line if r.font.cjk else f"{line}\n[yellow]note:[/] {escape(r.font.note)}"
