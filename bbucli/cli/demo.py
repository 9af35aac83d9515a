"""`bbu demo [--out DIR] [--minutes M | --steps N] [--examples] [--seed S] [--teachers K]`: run `run_demo` with one
progress bar per stage, then render the inspect summary, the metrics table and the
"what to look at next" list."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out

if TYPE_CHECKING:
    from bbucli.demo.run import DemoProgress, DemoResult

NAMES = {
    "generate": "generating synthetic photos", "convert": "converting", "inspect": "inspecting",
    "time": "timing one training step", "train": "training", "eval": "evaluating the head",
    "answers": "generating answers",
}

HELP = """Run the whole loop on the embedded default: raw photos -> JSONL -> inspect -> train the packaged tiny config (configs/tiny.yaml) -> eval, on CPU (or a GPU when present), with no network and no download.

Generates a synthetic set of 300 photos into OUT/raw (or, with --examples, takes the 16 photos of examples/raw in the working directory, a clone's root: the loop runs but they are too few to learn from), converts into OUT/data/, trains into OUT/run/, evaluates the final checkpoint's detection head on the val split into OUT/eval/ and generates answers for 8 val images into OUT/eval/lm/. Ends with the metrics table and the files worth opening next; OUT/demo.json holds the numbers.

The training length is --steps N (default 800, about 7 minutes in all on 2 CPU cores; the same run everywhere), or a time budget --minutes M turned into steps by timing one batch first. OUT must be new or empty.

--teachers K runs the few-shot path: K label-blind teachers per student in training (re-drawn every epoch) and the checkpoint's K teachers in eval, as bbu predict uses them. A teacher makes each step longer: the default length is then 500 steps, a little shorter in all than the default demo.

[bold]Examples[/]

[cyan]bbu demo[/]

[cyan]bbu demo --out runs/demo2 --steps 50 --seed 1[/]

[cyan]bbu demo --out runs/demo-k1 --teachers 1[/]
"""
TEACHERS_HELP = (
    "Teachers (in-context examples) per student. 0 (default): none, the fastest run. K: the few-shot "
    "demo, K label-blind teachers per student re-drawn from the pool every epoch in training, the "
    "checkpoint's fixed K in eval."
)


class _DemoProgress:
    """One transient Rich bar per stage on stderr, a line per training log."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=err, transient=True,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> _DemoProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, event: DemoProgress) -> None:
        if event.stage not in self.tasks:
            for done in self.tasks.values():
                self.bar.update(done, visible=False)
            self.tasks[event.stage] = self.bar.add_task(NAMES.get(event.stage, event.stage), total=None, stats="")
        task = self.tasks[event.stage]
        stats = event.detail if event.stage in ("convert", "eval") else ""
        train = event.train
        if train is not None and "loss" in train.logs:
            stats = f"loss {train.logs['loss']:.4g}"
            if train.kind == "log":
                err.print(f"step {train.step}/{train.max_steps}  loss {train.logs['loss']:.4g}", soft_wrap=True)
        self.bar.update(task, completed=event.done, total=event.total or None, stats=stats)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _metrics(result: DemoResult) -> Table:
    table = Table(title="bbu demo", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    source = "generated synthetic set" if result.generated else "examples"
    table.add_row("raw photos", f"{escape(str(result.raw_dir))} ({source})")
    table.add_row("images", f"{result.convert.images_kept} converted, split {', '.join(f'{k} {v}' for k, v in result.convert.split_sizes.items())}")
    planned = f", planned from {result.planned_from_s:.2f} s per batch" if result.planned_from_s is not None else ""
    shots = f"{result.teachers} label-blind teacher(s) per student" if result.teachers else "no teachers"
    table.add_row("training", f"{result.max_steps} steps, {shots}, in {result.train.runtime_s:.0f}s{planned}")
    if result.first_loss is not None and result.last_loss is not None:
        table.add_row("loss", f"{result.first_loss:.4g} -> {result.last_loss:.4g}")
    table.add_row("AP50 (head, val)", _f(result.ap50))
    table.add_row("AP (head, val)", _f(result.ap))
    if result.lm_images:
        table.add_row("answers (LM, val)", f"{result.lm_parsed} of {result.lm_images} parse as complete grounding JSON; AP50 {_f(result.lm_ap50)}")
    table.add_row("time", f"{result.seconds:.0f}s in all")
    return table


def _look_next(result: DemoResult) -> Table:
    table = Table(title="what to look at next", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("path", overflow="fold")
    for what, path in result.look_next:
        table.add_row(escape(what), escape(str(path)))
    return table


@app.command("demo", help=HELP)
@handle_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for every artefact (new or empty).")] = Path("runs/demo"),
    minutes: Annotated[float | None, typer.Option("--minutes", help="Time budget of the training instead of --steps, turned into steps by timing one batch.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Training steps (default 800, 500 with --teachers: the same run on every machine).")] = None,
    examples: Annotated[bool, typer.Option("--examples", help="Convert the 16 photos of ./examples/raw (a clone's root) instead of generating 300.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated set, the split and the model.")] = 0,
    teachers: Annotated[int, typer.Option("--teachers", help=TEACHERS_HELP)] = 0,
) -> None:
    from bbucli.cli.inspect_views import summary_tables
    from bbucli.cli.train import _quiet_libraries
    from bbucli.demo.run import run_demo

    _quiet_libraries()
    with _DemoProgress() as bar:
        result = run_demo(
            out_dir, minutes=minutes, max_steps=steps, use_examples=examples, seed=seed, teachers=teachers,
            progress=bar.update,
        )
    for table in summary_tables(result.summary):
        out.print(table)
    out.print(_metrics(result))
    out.print(_look_next(result))
