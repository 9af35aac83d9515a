"""`bbu eval PREDICTIONS --data GT`: score a predictions file with `evaluate_files`, render the metrics,
the per-class table and the problems found (or print metrics.json with --json)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out
from bbucli.errors import UsageError
from bbucli.evaluation import EvalResult, EvalRun, evaluate_files

PROBLEMS_SHOWN = 15


class Backend(str, Enum):
    auto = "auto"
    pycocotools = "pycocotools"
    faster = "faster"


HELP = """Score predictions against ground truth: COCO AP/AR, per-class and type-level AP, precision/recall/F1 and a confusion matrix at a score threshold, defect escape rate.

PREDICTIONS is a bbu predictions JSONL (one line per image: {"image": "images/a.jpeg", "objects": [{"bbox_2d": \\[x1, y1, x2, y2], "desc": "...", "score": 0.9}], "source": "head", "unparseable": false}) or a COCO results JSON; --data is a JSONL split written by `bbu convert` or a COCO instances JSON. Malformed lines, unknown images and boxes outside the image are reported by file:line; the rest is scored.

Writes metrics.json, results_coco.json, per_class.csv, confusion.csv, pr_curve.png and overlays/ of the worst images into --out (default: eval/ beside PREDICTIONS).

[bold]Examples[/]

[cyan]bbu eval runs/preds.jsonl --data runs/data/bbu.val.jsonl[/]

[cyan]bbu eval detections.json --data instances_val.json --threshold 0.3 --json[/]
"""


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metrics(result: EvalResult, run: EvalRun) -> Table:
    table = Table(title="bbu eval", show_header=False)
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
    table.add_row("formats", f"predictions {run.predictions_format}, ground truth {run.ground_truth_format}")
    table.add_row("backend", result.backend)
    if run.out_dir is not None:
        table.add_row("written", f"{', '.join(sorted({p.name if p.parent == run.out_dir else p.parent.name + '/' for p in run.written.values()}))}\nin {run.out_dir}")
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
    predictions: Annotated[Path, typer.Argument(exists=True, help="Predictions: a bbu predictions JSONL or a COCO results JSON.")],
    data: Annotated[Path, typer.Option("--data", "-d", exists=True, dir_okay=False, help="Ground truth: a JSONL split from `bbu convert` or a COCO instances JSON.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", file_okay=False, help="Folder for metrics.json, tables and plots (default: eval/ beside PREDICTIONS).")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", "-t", help="Score threshold for P/R/F1, confusion and escapes (default: the best F1 on this split).")] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="COCOeval implementation; auto uses faster-coco-eval when installed (same numbers).")] = Backend.auto,
    taxonomy: Annotated[Path | None, typer.Option("--taxonomy", help="Taxonomy YAML telling defect classes apart (default: the built-in one).")] = None,
    overlays: Annotated[int, typer.Option("--overlays", min=0, help="Overlay PNGs of the worst images to draw.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout instead of tables.")] = False,
) -> None:
    if predictions.is_dir():
        raise UsageError(
            f"{predictions} is a folder: scoring a checkpoint arrives with the training stage",
            hint="pass a predictions file (bbu predictions JSONL or COCO results JSON) and --data GT",
        )
    with err.status("scoring", spinner="dots") as status:
        run = evaluate_files(
            predictions, data, out_dir, threshold=threshold, backend=backend.value, taxonomy=taxonomy,
            overlays=overlays, progress=lambda stage, done, total: status.update(f"scoring: {stage} ({done + 1}/{total})"),
        )
    if as_json:
        typer.echo(json.dumps(run.result.to_dict(), ensure_ascii=False, indent=2))
        return
    out.print(_per_class(run.result))
    if run.result.problems:
        out.print(_problems(run.result))
    out.print(_metrics(run.result, run))
