"""`bbu train CONFIG [key=value ...]`: load and validate the config, then `run_training` with a Rich
progress bar and a one-screen summary; or `--print-config`, `--dry-run`, or a launcher for
`--gpus` / `--nnodes` / `--hostfile`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bbucli.cli.app import app
from bbucli.cli.console import err, handle_errors, out
from bbucli.train.launch import is_launched, launch_command

if TYPE_CHECKING:
    from bbucli.train.run import DryRunReport, TrainProgress, TrainResult

HELP = """Train Qwen2.5-VL + the detection head on a config YAML.

The config is validated in full before anything loads (every problem listed, exit code 2). KEY=VALUE overrides use dotted keys and YAML values (optim.lrs.llm=2e-5, data.packing=false, train.report_to=\\[tensorboard]); paths in overrides are relative to the working directory.

Writes into train.output_dir: config.yaml, taxonomy.yaml, run.json, metrics.jsonl, checkpoint-N/ (a bbu checkpoint plus the Trainer's resume state) and final/. The folder is checked writable before anything is built (exit code 2).

A sample whose image cannot be decoded when it is drawn (a truncated file: its header reads, so `bbu inspect` passes it unless --verify-images) is skipped and counted (unreadable_samples in metrics.jsonl, listed in the summary); more than max(10, 1% of the train split) stop the run with exit code 1.

[bold]Examples[/]

[cyan]bbu train configs/tiny.yaml train.max_steps=20[/]

[cyan]bbu train configs/tiny.yaml --dry-run[/]  (one batch through the model: shapes, memory, parameter groups)

[cyan]bbu train configs/3b.yaml --gpus 8[/]  (DeepSpeed launcher, one process per GPU)

[cyan]bbu train configs/3b.yaml train.resume=true[/]  (continue from the latest checkpoint-N)
"""


@app.command("train", help=HELP)
@handle_errors
def train(
    config: Annotated[Path, typer.Argument(help="Training config YAML (e.g. configs/tiny.yaml).")],
    overrides: Annotated[list[str] | None, typer.Argument(metavar="[KEY=VALUE]...", help="Config overrides, dotted keys, YAML values.")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved config and exit.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build everything, run one batch forward and backward, print shapes, memory and parameter groups; write nothing.")] = False,
    resume: Annotated[Path | None, typer.Option("--resume", help="Resume from this checkpoint-N folder (same as train.resume=DIR).")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", min=1, help="Processes per node (one per GPU; CPU processes on a machine without GPUs), started under a launcher.")] = None,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="Nodes: with --hostfile through the DeepSpeed launcher, else torchrun (run the command on each node with MASTER_ADDR and NODE_RANK set).")] = 1,
    hostfile: Annotated[Path | None, typer.Option("--hostfile", help="DeepSpeed hostfile (`host slots=N` per line) for several nodes.")] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="auto (DeepSpeed launcher with a deepspeed config or --hostfile, else torchrun), deepspeed or torchrun.")] = "auto",
    local_rank: Annotated[int | None, typer.Option("--local_rank", "--local-rank", hidden=True, help="Set by the DeepSpeed launcher; the rank is read from LOCAL_RANK.")] = None,
) -> None:
    from bbucli.errors import UsageError
    from bbucli.train.config.loading import describe_config, load_config

    if launcher not in ("auto", "deepspeed", "torchrun"):
        raise UsageError(f"--launcher must be auto, deepspeed or torchrun, got {launcher!r}")
    given = list(overrides or [])
    if resume is not None:
        given.append(f"train.resume={json.dumps(str(resume))}")
    cfg = load_config(config, given)
    if print_config:
        typer.echo(describe_config(cfg), nl=False)
        return
    wants_launcher = gpus is not None or nnodes > 1 or hostfile is not None
    if wants_launcher and not dry_run and not is_launched(os.environ):
        plan = launch_command(
            config,
            given,
            gpus=gpus or 1,
            nnodes=nnodes,
            hostfile=hostfile,
            use_deepspeed=cfg.deepspeed is not None,
            launcher=launcher,
            environ=os.environ,
        )
        err.print(f"[dim]launching {plan.nproc_per_node} x {plan.nnodes} processes ({plan.launcher}):[/] {escape(str(plan))}")
        code = subprocess.run(list(plan.argv), env={**os.environ, **plan.env}, check=False).returncode
        if code:
            raise typer.Exit(code)
        return

    _quiet_libraries()
    from bbucli.train.run import run_training

    main = os.environ.get("RANK", "0") == "0"
    if dry_run:
        with err.status("dry run: building the model and running one batch", spinner="dots"):
            result = run_training(cfg, dry_run=True)
        _render_dry_run(result.dry_run)
        return
    with _TrainProgress(enabled=main) as bar:
        result = run_training(cfg, progress=bar.update)
    if main:
        out.print(_summary(result))


def _quiet_libraries() -> None:
    """transformers' info chatter off (warnings stay); DeepSpeed only speaks up for warnings."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


class _TrainProgress:
    """A Rich progress bar on stderr (steps, loss, tokens/s, vision share, padding, ETA) and one
    line per log, eval and checkpoint (what stays in a CI log)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.task: int | None = None

    def __enter__(self) -> _TrainProgress:
        if self.enabled:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()

    def update(self, event: TrainProgress) -> None:
        if not self.enabled:
            return
        if self.task is None:
            self.task = self.bar.add_task("train", total=event.max_steps, completed=event.step, stats="")
        logs = event.logs
        if event.kind == "log" and "loss" in logs:
            err.print(f"step {event.step}/{event.max_steps}  " + _log_line(logs), soft_wrap=True)
        elif event.kind == "eval":
            shown = {k: v for k, v in logs.items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}
            err.print(f"eval at step {event.step}  " + "  ".join(f"{k} {v:.4g}" for k, v in shown.items()), soft_wrap=True)
        elif event.kind == "save" and event.path is not None:
            err.print(f"[dim]saved {escape(str(event.path))}[/]")
        stats = ""
        if "loss" in logs:
            stats = (
                f"loss {logs['loss']:.4g}  {logs.get('tokens_per_s', 0):,.0f} tok/s  "
                f"vision {logs.get('vision_share', 0):.0%}  padding {logs.get('padding', 0):.0%}"
            )
        self.bar.update(self.task, total=event.max_steps, completed=event.step, stats=stats)


def _log_line(logs: dict[str, float]) -> str:
    keys = ("loss", "teacher_lm", "student_lm", "l1", "giou", "objectness", "caption", "grad_norm")
    parts = [f"{k} {logs[k]:.4g}" for k in keys if k in logs]
    if "tokens_per_s" in logs:
        parts.append(f"{logs['tokens_per_s']:,.0f} tok/s")
    if "vision_share" in logs:
        parts.append(f"vision {logs['vision_share']:.0%}")
    if "padding" in logs:
        parts.append(f"padding {logs['padding']:.0%}")
    lrs = [f"{k.removeprefix('lr_')} {v:.2g}" for k, v in logs.items() if k.startswith("lr_")]
    if lrs:
        parts.append("lr " + " ".join(lrs))
    return "  ".join(parts)


def _summary(result: TrainResult) -> Table:
    table = Table(title="bbu train", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("run folder", escape(str(result.output_dir)))
    resumed = f" (resumed from {result.resumed_from.name})" if result.resumed_from else ""
    table.add_row("steps", f"{result.global_step} ({result.epoch:.2f} epochs, {result.world_size} process(es)){resumed}")
    table.add_row("time", f"{result.runtime_s:.1f}s")
    if result.losses:
        first, last = result.losses[0], result.losses[-1]
        table.add_row("loss", f"{first[1]:.4g} at step {first[0]} -> {last[1]:.4g} at step {last[0]}")
    logs = result.last_logs
    parts = {k: v for k, v in logs.items() if k in ("teacher_lm", "student_lm", "l1", "giou", "objectness", "objectness_token", "caption")}
    if parts:
        table.add_row("last components", "  ".join(f"{k} {v:.4g}" for k, v in parts.items()))
    if "tokens_per_s" in logs:
        table.add_row("throughput", f"{logs['tokens_per_s']:,.0f} tok/s, vision {logs.get('vision_share', 0):.0%} of tokens, padding {logs.get('padding', 0):.0%}")
    if result.eval_metrics:
        shown = {k: v for k, v in result.eval_metrics.items() if k.startswith("eval_") and "runtime" not in k and "per_second" not in k}
        table.add_row("last eval", "  ".join(f"{k.removeprefix('eval_')} {v:.4g}" for k, v in shown.items()))
    if result.best_checkpoint is not None:
        table.add_row("best checkpoint", f"{escape(str(result.best_checkpoint))} ({result.metric_for_best} {result.best_metric:.4g})")
    if result.final_checkpoint is not None:
        table.add_row("final checkpoint", escape(str(result.final_checkpoint)))
    for name, stats in (("train data", result.train), ("val data", result.val)):
        if stats is not None:
            table.add_row(name, f"{stats.samples} samples of {stats.episodes} episodes, {stats.skipped_too_long} skipped (too long), {stats.teachers_dropped} teachers dropped")
    if result.unreadable:
        shown = "\n".join(escape(reason) for reason in list(result.unreadable.values())[:5])
        table.add_row("unreadable (skipped)", f"{len(result.unreadable)} sample(s)\n{shown}")
    return table


def _render_dry_run(report: DryRunReport | None) -> None:
    if report is None:
        return
    shapes = Table(title="one batch")
    shapes.add_column("tensor")
    shapes.add_column("shape", justify="right")
    for name, shape in report.shapes.items():
        shapes.add_row(name, " x ".join(str(s) for s in shape) or "scalar")
    out.print(shapes)
    groups = Table(title="parameter groups")
    for column in ("group", "lr", "tensors", "params", "trainable"):
        groups.add_column(column, justify="left" if column == "group" else "right")
    for row in report.groups:
        groups.add_row(row.group, "frozen" if row.lr == 0 else f"{row.lr:.3g}", str(row.tensors), f"{row.params:,}", f"{row.trainable:,}")
    groups.add_row("total", "", str(sum(r.tensors for r in report.groups)), f"{sum(r.params for r in report.groups):,}", f"{sum(r.trainable for r in report.groups):,}")
    out.print(groups)
    summary = Table(title="bbu train --dry-run (nothing written)", show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value", overflow="fold")
    summary.add_row("model", f"{report.device}, {report.dtype}, attention {report.attention}")
    summary.add_row("batch", f"{report.tokens} tokens, {report.vision_tokens} vision ({report.vision_tokens / max(report.tokens, 1):.0%}), padding {report.padding:.0%}")
    summary.add_row("losses", "  ".join(f"{k} {v:.4g}" for k, v in report.losses.items() if not k.endswith("_tokens") and k != "num_boxes"))
    summary.add_row("forward + backward", f"{report.seconds:.2f}s")
    summary.add_row("memory", ", ".join(f"{k.replace('_', ' ')} {v:.2f} GiB" for k, v in report.memory_gb.items()))
    for name, stats in (("train data", report.train), ("val data", report.val)):
        if stats is not None:
            summary.add_row(name, f"{stats.samples} samples of {stats.episodes} episodes, {stats.skipped_too_long} skipped (too long), {stats.teachers_dropped} teachers dropped, {stats.tokens:,} tokens")
    out.print(summary)
