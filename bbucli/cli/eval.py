"""`bbu eval CKPT [--data GT]`: run a checkpoint over a split and score it (`evaluate_checkpoint`, with a
progress bar); `bbu eval PREDICTIONS --data GT`: score a predictions file (`evaluate_files`). Renders
the metrics, the per-class table and the problems found (or prints metrics.json with --json)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out
from bbucli.cli.options import Backend, DType, check_threshold
from bbucli.cli.options import EvalSource as Source
from bbucli.errors import UsageError
from bbucli.evaluation import EvalResult, evaluate_files

PROBLEMS_SHOWN = 15


class TeacherSource(str, Enum):
    """Where `bbu eval CKPT` takes each image's teachers from (`teacher_source`)."""

    checkpoint = "checkpoint"
    episodes = "episodes"


HELP = """Evaluate a checkpoint, or score predictions, against ground truth: COCO AP/AR, per-class and type-level AP, precision/recall/F1 and a confusion matrix at a score threshold, defect escape rate, unparseable answers.

CKPT (a checkpoint folder written by `bbu train`): runs inference over --data (default: the val JSONL named in the checkpoint's config.yaml) with --source head (detection head: class by the caption decoder's likelihood of each class desc, score = objectness x class probability), lm (generated answer, score = mean token log-probability) or both. Each image is shown after the checkpoint's own teacher examples, the same label-blind ones `bbu predict` uses (--teachers K: the first K; 0: none); --teacher-source episodes prepends instead the teachers each JSONL episode lists (K default: the training config's data.num_teachers), which on data converted by an older bbu (teachers chosen by the student's own classes) shows how much that choice inflated the scores. Writes predictions.jsonl, inference.json and the files below into --out (default: CKPT/eval/; with --source both, one sub-folder per source).

PREDICTIONS is a bbu predictions JSONL (one line per image: {"image": "images/a.jpeg", "objects": [{"bbox_2d": \\[x1, y1, x2, y2], "desc": "...", "score": 0.9}], "source": "head", "unparseable": false}) or a COCO results JSON; --data is a JSONL split written by `bbu convert` or a COCO instances JSON. Malformed lines, unknown images and boxes outside the image are reported by file:line; the rest is scored. Predictions of which no record matches a ground-truth image are an error (exit 1), and nothing is written.

Writes metrics.json, results_coco.json, per_class.csv, confusion.csv, pr_curve.png and overlays/ of the worst images into --out (default: eval/ beside PREDICTIONS).

[bold]Examples[/]

[cyan]bbu eval runs/tiny/checkpoint-100 --source both[/]

[cyan]bbu eval runs/preds.jsonl --data runs/data/bbu.val.jsonl[/]

[cyan]bbu eval detections.json --data instances_val.json --threshold 0.3 --json[/]
"""


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metrics(result: EvalResult, formats: str, out_dir: Path | None, written: dict[str, Path], title: str = "bbu eval") -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", overflow="fold")
    coco = result.coco
    table.add_row("AP / AP50 / AP75", f"{_f(coco['AP'])} / {_f(coco['AP50'])} / {_f(coco['AP75'])}")
    table.add_row("AP small / medium / large", f"{_f(coco['AP_small'])} / {_f(coco['AP_medium'])} / {_f(coco['AP_large'])}")
    table.add_row("AR@1 / AR@10 / AR@100", f"{_f(coco['AR1'])} / {_f(coco['AR10'])} / {_f(coco['AR100'])}")
    types, agnostic = result.type_coco, result.agnostic_coco
    table.add_row("type-level AP / AP50", f"{_f(types['AP'])} / {_f(types['AP50'])}")
    table.add_row("class-agnostic AP / AP50", f"{_f(agnostic['AP'])} / {_f(agnostic['AP50'])}")
    op = result.operating_point
    how = "best F1 on this split" if op.chosen_by == "max_f1" else "given"
    table.add_row("threshold", "none (no predictions)" if op.threshold is None else f"{op.threshold:.4g} ({how})")
    table.add_row("precision / recall / F1", f"{_f(op.precision)} / {_f(op.recall)} / {_f(op.f1)}  (tp {op.tp}, fp {op.fp}, fn {op.fn}, IoU 0.5)")
    esc = result.escape
    table.add_row(
        "defect escape rate",
        "no defects in the ground truth" if esc.rate is None
        else f"{_f(esc.rate)}  ({esc.escaped_objects} of {esc.defect_objects} defect objects; {esc.escaped_images} of {esc.defect_images} images)",
    )
    c = result.counts
    table.add_row("images", f"{c['images']} ({c['images_without_objects']} without objects, {c['images_without_predictions']} without predictions)")
    table.add_row("objects / predictions", f"{c['gt_objects']} / {c['predictions_scored']} scored of {c['predictions']} read")
    table.add_row("unparseable answers", str(c["unparseable"]))
    table.add_row("formats", formats)
    table.add_row("backend", result.backend)
    if out_dir is not None:
        table.add_row("written", f"{', '.join(sorted({p.name if p.parent == out_dir else p.parent.name + '/' for p in written.values()}))}\nin {out_dir}")
    return table


def _per_class(result: EvalResult) -> Table:
    table = Table(title="per class (P/R/F1 at the threshold)")
    table.add_column("desc", overflow="fold")
    for name in ("gt", "pred", "AP", "AP50", "P", "R", "F1"):
        table.add_column(name, justify="right")
    for m in result.per_class:
        desc = f"{m.desc} [red](defect)[/]" if m.defect else m.desc
        table.add_row(desc, str(m.gt), str(m.predictions), _f(m.ap), _f(m.ap50), _f(m.precision), _f(m.recall), _f(m.f1))
    return table


def _problems(result: EvalResult) -> Table:
    shown = result.problems[:PROBLEMS_SHOWN]
    table = Table(title=f"problems (first {len(shown)} of {len(result.problems)}; all in metrics.json)")
    table.add_column("where", overflow="fold")
    table.add_column("problem", overflow="fold")
    for p in shown:
        table.add_row(p.where, p.message)
    return table


@app.command("eval", help=HELP)
@handle_errors
def eval_command(
    target: Annotated[Path, typer.Argument(exists=True, metavar="CKPT|PREDICTIONS", help="A checkpoint folder, or predictions: a bbu predictions JSONL or a COCO results JSON.")],
    data: Annotated[Path | None, typer.Option("--data", "-d", exists=True, dir_okay=False, help="Ground truth: a JSONL split from `bbu convert` or a COCO instances JSON (required for PREDICTIONS).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False, help="Folder for metrics.json, tables and plots (default: CKPT/eval/, or eval/ beside PREDICTIONS).")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", "-t", help="Score threshold for P/R/F1, confusion and escapes (default: the best F1 on this split).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="COCOeval implementation; auto uses faster-coco-eval when installed (same numbers).")] = Backend.auto,
    taxonomy: Annotated[Path | None, typer.Option("--taxonomy", help="Taxonomy YAML telling defect classes apart (default: the checkpoint's, else the built-in one).")] = None,
    overlays: Annotated[int, typer.Option("--overlays", min=0, help="Overlay PNGs of the worst images to draw.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout instead of tables ({source: metrics} with --source both).")] = False,
    source: Annotated[Source | None, typer.Option("--source", help="CKPT only: head, lm or both (default head).")] = None,
    teachers: Annotated[int | None, typer.Option("--teachers", "-k", min=0, help="CKPT only: teachers prepended per image (default: all the checkpoint carries, or with --teacher-source episodes the config's data.num_teachers; 0: none).")] = None,
    teacher_source: Annotated[TeacherSource | None, typer.Option("--teacher-source", help="CKPT only: checkpoint (its label-blind teacher examples, as bbu predict) or episodes (the teachers each JSONL episode lists). Default checkpoint.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="CKPT only: images per forward pass (default 4).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="CKPT only: longest generated answer for lm (default 1024).")] = None,
    hypotheses: Annotated[int | None, typer.Option("--hypotheses", min=1, help="CKPT only: head classes per query, each a scored box (default 1; 3 is DETR's top-100 over query x class pairs, a higher AP).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="CKPT only: cuda, cuda:1, cpu (default: cuda when available).")] = None,
    dtype: Annotated[DType | None, typer.Option("--dtype", help="CKPT only: Qwen weights dtype (default auto: bf16 on a GPU, else fp32).")] = None,
) -> None:
    if target.is_dir():
        if source is not Source.both:  # a predictions file's scores are taken as they are
            check_threshold(threshold, (source or Source.head).value)
        _eval_checkpoint(
            target,
            data,
            out_dir,
            threshold=threshold,
            backend=backend.value,
            taxonomy=taxonomy,
            overlays=overlays,
            as_json=as_json,
            source=source or Source.head,
            teachers=teachers,
            teacher_source=(teacher_source or TeacherSource.checkpoint).value,
            batch_size=batch_size or 4,
            max_new_tokens=max_new_tokens or 1024,
            hypotheses=hypotheses or 1,
            device=device,
            dtype=None if dtype in (None, DType.auto) else dtype.value,
        )
        return
    checkpoint_only = {
        "--source": source,
        "--teachers": teachers,
        "--teacher-source": teacher_source,
        "--batch-size": batch_size,
        "--max-new-tokens": max_new_tokens,
        "--hypotheses": hypotheses,
        "--device": device,
        "--dtype": dtype,
    }
    given = [name for name, value in checkpoint_only.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} apply to a checkpoint folder, not to a predictions file", hint="drop them, or pass a checkpoint folder")
    if data is None:
        raise UsageError("scoring a predictions file needs --data GT", hint="pass --data with the JSONL split or COCO instances JSON the predictions were made on")
    with err.status("scoring", spinner="dots") as status:
        run = evaluate_files(
            target, data, out_dir, threshold=threshold, backend=backend.value, taxonomy=taxonomy,
            overlays=overlays, progress=lambda stage, done, total: status.update(f"scoring: {stage} ({done + 1}/{total})"),
        )
    if as_json:
        typer.echo(json.dumps(run.result.to_dict(), ensure_ascii=False, indent=2))
        return
    out.print(_per_class(run.result))
    if run.result.problems:
        out.print(_problems(run.result))
    out.print(_metrics(run.result, f"predictions {run.predictions_format}, ground truth {run.ground_truth_format}", run.out_dir, dict(run.written)))


def _eval_checkpoint(checkpoint: Path, data: Path | None, out_dir: Path | None, *, as_json: bool, source: Source, **options) -> None:
    from bbucli.infer.checkpoint_eval import evaluate_checkpoint

    sources = ("head", "lm") if source is Source.both else (source.value,)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            name = "predicting" if stage == "predict" else "loading the checkpoint" if stage == "load" else "scoring"
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        run = evaluate_checkpoint(checkpoint, data, out_dir, sources=sources, progress=progress, **options)
    for note in run.notes:
        err.print(f"[yellow]warning:[/] {escape(note)}", soft_wrap=True)
    if as_json:
        metrics = {s.source: s.result.to_dict() for s in run.sources}
        typer.echo(json.dumps(metrics[sources[0]] if len(sources) == 1 else metrics, ensure_ascii=False, indent=2))
        return
    k = ("all listed" if run.teachers is None else str(run.teachers)) + f" from the {run.teacher_source}"
    formats = f"checkpoint {run.checkpoint}, ground truth {run.ground_truth_format} ({run.data}), teachers {k}"
    for s in run.sources:
        out.print(_per_class(s.result))
        if s.result.problems:
            out.print(_problems(s.result))
        title = f"bbu eval: {s.source} ({run.images_predicted} of {run.images} images, {s.seconds_per_image:.2f} s/image)"
        out.print(_metrics(s.result, formats, s.out_dir, dict(s.written), title=title))
