"""`run_training(cfg)`: everything `bbu train` does, from a validated config to checkpoints.

Builds, in order: the processor (pixel limits of `model`), the taxonomy, the classes (the descs of
the train episodes and the teacher pool) and the prompts listing them, the datasets (`data`), the
caption vocabulary (of those classes), the model (tiny or a local Qwen2.5-VL folder; fp32 on
CPU, bf16 + flash-attention-2 on a GPU when configured or by "auto"), the multi-task loss and a
`BBUTrainer`, then trains.

The run folder (`train.output_dir`):

    config.yaml          the resolved config (`describe_config`), written at the start
    taxonomy.yaml        the taxonomy the prompts and descs come from
    run.json             bbucli / torch / transformers / deepspeed versions, world size, resume
    metrics.jsonl        every log line (training, eval, summary); a resumed run appends
    checkpoint-N/        every train.save_steps: a bbu checkpoint (`load_checkpoint` reads it:
                         qwen/, processor/, head.safetensors, bbu.json, config.yaml,
                         taxonomy.yaml) plus what the Trainer resumes from: optimizer.pt,
                         scheduler.pt, rng_state*.pth, trainer_state.json and model.safetensors
                         (without DeepSpeed; the weights then exist twice), or the DeepSpeed
                         engine's global_stepN/ + latest (with DeepSpeed)
    final/               the bbu checkpoint of the end of training (the best one when
                         train.load_best_model_at_end); no optimizer state

Resume (`train.resume: true` -> the latest complete checkpoint-N; or a checkpoint-N folder)
restores the weights, optimizer, scheduler and RNG states, the step and epoch counters; the data
position follows because the batches of an epoch are a pure function of (seed, epoch), so the
Trainer skips the batches already trained in the resumed epoch. The best checkpoint by
`train.metric_for_best_model` is kept by the checkpoint rotation and reported.

The parts are built by `bbucli.train.build`, one named step each. `dry_run=True` builds everything, runs one training batch forward and backward (no optimizer step)
and returns shapes, losses, memory and the parameter-group table (`bbucli.train.dry_run`); nothing
is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bbucli.data.dataset import DatasetStats
from bbucli.errors import ConfigError
from bbucli.evaluation.output_paths import writable_dir
from bbucli.train.build import METRICS_FILE, RunParts, build_run
from bbucli.train.config.loading import BbuConfig, describe_config
from bbucli.train.dry_run import DryRunReport, GroupRow, dry_run_batch, remove_empty_tree
from bbucli.train.launch import is_launched, single_process_env
from bbucli.train.trainer import (
    CHECKPOINT_PREFIX,
    RESUME_WEIGHTS,
    TRAINER_STATE,
    TrainProgress,
    latest_checkpoint,
)

__all__ = [
    "METRICS_FILE",
    "DryRunReport",
    "GroupRow",
    "TrainProgress",
    "TrainResult",
    "resolve_resume",
    "run_training",
]

FINAL_DIR = "final"


@dataclass(frozen=True)
class TrainResult:
    """What a run did. losses: (step, loss) of every training log of this run (after the resumed
    step when resuming); last_logs: the last training log;
    best_checkpoint / best_metric: by train.metric_for_best_model (None without evaluation);
    final_checkpoint: output_dir/final; resumed_from: the checkpoint resumed, if any;
    train / val: dataset counts of the first epoch; unreadable: samples skipped because their
    images could not be read (student image -> reason, this process's); dry_run: set (and nothing
    else run) for a dry run."""

    output_dir: Path
    global_step: int = 0
    epoch: float = 0.0
    train_loss: float | None = None
    runtime_s: float = 0.0
    losses: tuple[tuple[int, float], ...] = ()
    last_logs: Mapping[str, float] = field(default_factory=dict)
    eval_metrics: Mapping[str, float] = field(default_factory=dict)
    final_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    best_metric: float | None = None
    metric_for_best: str | None = None
    resumed_from: Path | None = None
    world_size: int = 1
    train: DatasetStats | None = None
    val: DatasetStats | None = None
    unreadable: Mapping[str, str] = field(default_factory=dict)
    dry_run: DryRunReport | None = None


def run_training(
    cfg: BbuConfig,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    dry_run: bool = False,
) -> TrainResult:
    """Train as `cfg` says (see the module docstring); under a launcher this is one rank.

    progress: called on the main process with `TrainProgress` (begin, every step, logs, evals,
    saves, end). Raises BbuErrors: ConfigError for what validation could not know (resume folder,
    output folder in use, TensorBoard missing), DataError for unusable data, TrainingDiverged for
    a NaN or inf loss.
    """
    _check_reporting(cfg)
    _set_up_process_group_env(cfg)
    resume = None if dry_run else resolve_resume(cfg)
    if resume is None and not dry_run:
        _refuse_used_output_dir(cfg)
    if not dry_run:  # before the model is built: a read-only folder would fail only at the end
        writable_dir(cfg.train.output_dir, "train.output_dir", create=False)
    existed = Path(cfg.train.output_dir).exists()
    parts = build_run(cfg, progress)
    if dry_run:
        return _dry_run(cfg, parts, output_dir_existed=existed)
    if parts.trainer.args.should_save:
        _write_run_folder(cfg, parts, resume)
    return _train(cfg, parts, resume)


def resolve_resume(cfg: BbuConfig) -> Path | None:
    """The checkpoint to resume from: None (fresh run), the latest complete checkpoint-N of
    output_dir (`train.resume: true`) or the folder given. ConfigError when it cannot be resumed
    (no Trainer state, or written with/without DeepSpeed unlike this run)."""
    resume = cfg.train.resume
    if resume is False:
        return None
    if resume is True:
        found = latest_checkpoint(cfg.train.output_dir)
        if found is None:
            raise ConfigError(
                f"train.resume is true, but {cfg.train.output_dir} holds no complete "
                f"{CHECKPOINT_PREFIX}N folder",
                hint="start a fresh run (train.resume=false), or point train.resume at a checkpoint",
            )
        resume = found
    folder = Path(resume)
    if not (folder / TRAINER_STATE).is_file():
        raise ConfigError(
            f"{folder} cannot be resumed: it has no {TRAINER_STATE} (a final/ folder or a "
            "checkpoint cut short holds no optimizer state)",
            hint=f"resume from a {CHECKPOINT_PREFIX}N folder of the run",
        )
    has_engine = any(folder.glob("global_step*"))
    if cfg.deepspeed is not None and not has_engine:
        raise ConfigError(
            f"{folder} was written without DeepSpeed, but this run uses it",
            hint="resume it with deepspeed=null (bf16 weights then train as fp32 master weights "
            "under bf16 autocast, as that run did), or start the DeepSpeed run fresh",
        )
    if cfg.deepspeed is None and not (folder / RESUME_WEIGHTS).is_file():
        raise ConfigError(
            f"{folder} was written by a DeepSpeed run (or lacks {RESUME_WEIGHTS}), but this run "
            "has no deepspeed section",
            hint="resume it with the same deepspeed config it was trained with",
        )
    return folder


# ---- before building ---------------------------------------------------------------------------


def _check_reporting(cfg: BbuConfig) -> None:
    """ConfigError when `train.report_to` asks for TensorBoard and no writer is installed."""
    report = cfg.train.arguments.get("report_to")
    wanted = [report] if isinstance(report, str) else list(report or [])
    if "tensorboard" in wanted and not any(
        importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")
    ):
        raise ConfigError(
            "train.report_to asks for tensorboard, but neither tensorboard nor tensorboardX is "
            "installed",
            hint="pip install tensorboard, or set train.report_to=none",
        )


def _set_up_process_group_env(cfg: BbuConfig) -> None:
    """DeepSpeed needs a process group even for one process: set what a launcher would set
    (values already in the environment win)."""
    if cfg.deepspeed is None:
        return
    for key, value in single_process_env(os.environ).items():
        os.environ.setdefault(key, value)


def _refuse_used_output_dir(cfg: BbuConfig) -> None:
    """ConfigError when a fresh run would write into a folder that holds another run's
    checkpoints."""
    found = latest_checkpoint(cfg.train.output_dir)
    if found is not None:
        raise ConfigError(
            f"train.output_dir {cfg.train.output_dir} already holds checkpoints ({found.name}): "
            "a fresh run there would mix its checkpoints with the old run's",
            hint="continue it with train.resume=true (or --resume DIR), or choose another "
            "train.output_dir",
        )


# ---- running -----------------------------------------------------------------------------------


def _dry_run(cfg: BbuConfig, parts: RunParts, *, output_dir_existed: bool) -> TrainResult:
    """One batch forward and backward; the output folder the Trainer made is removed again."""
    trainer, datasets = parts.trainer, parts.datasets
    val = datasets.val.stats if datasets.val else None
    report = dry_run_batch(
        trainer,
        cfg,
        image_token_id=parts.conversation.processor.image_token_id,
        train=datasets.train.stats,
        val=val,
    )
    if not output_dir_existed:  # the Trainer makes output_dir; a dry run leaves no trace
        remove_empty_tree(Path(cfg.train.output_dir))
    return TrainResult(
        output_dir=cfg.train.output_dir,
        world_size=trainer.args.world_size,
        train=datasets.train.stats,
        val=val,
        dry_run=report,
    )


def _train(cfg: BbuConfig, parts: RunParts, resume: Path | None) -> TrainResult:
    """Train (from `resume` when given), save final/, and sum up what this run logged."""
    trainer, datasets = parts.trainer, parts.datasets
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = Path(cfg.train.output_dir) / FINAL_DIR
    trainer.save_model(str(final))
    runtime = time.perf_counter() - started
    state = trainer.state
    history = _this_runs_logs(state.log_history, resume)
    losses = tuple((int(h["step"]), float(h["loss"])) for h in history if "loss" in h)
    last = next((h for h in reversed(history) if "loss" in h), {})
    evals = next((h for h in reversed(history) if "eval_loss" in h), {})
    best = state.best_model_checkpoint
    return TrainResult(
        output_dir=Path(cfg.train.output_dir),
        global_step=state.global_step,
        epoch=float(state.epoch or 0.0),
        train_loss=None if output.training_loss is None else float(output.training_loss),
        runtime_s=runtime,
        losses=losses,
        last_logs=_numbers(last),
        eval_metrics=_numbers(evals),
        final_checkpoint=final,
        best_checkpoint=Path(best) if best else None,
        best_metric=state.best_metric,
        metric_for_best=trainer.args.metric_for_best_model,
        resumed_from=resume,
        world_size=trainer.args.world_size,
        train=datasets.train.stats,
        val=datasets.val.stats if datasets.val else None,
        unreadable=dict(trainer.unreadable),
    )


def _this_runs_logs(log_history: list[dict[str, Any]], resume: Path | None) -> list[dict[str, Any]]:
    """The logs after the resumed step: a resumed run's history starts with the checkpoint's."""
    start = 0
    if resume is not None:
        start = json.loads((resume / TRAINER_STATE).read_text())["global_step"]
    return [dict(h) for h in log_history if h.get("step", 0) > start]


def _numbers(log: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of one log line."""
    return {k: v for k, v in log.items() if isinstance(v, int | float)}


def _write_run_folder(cfg: BbuConfig, parts: RunParts, resume: Path | None) -> None:
    """config.yaml, taxonomy.yaml and run.json of the run folder (see the module docstring)."""
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(describe_config(cfg), encoding="utf-8")
    (out / "taxonomy.yaml").write_text(parts.conversation.taxonomy_yaml, encoding="utf-8")
    info = _run_info(cfg, parts, resume)
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _run_info(cfg: BbuConfig, parts: RunParts, resume: Path | None) -> dict[str, Any]:
    """run.json: versions, world size, device, start time, resume and dataset counts."""
    import torch
    import transformers

    from bbucli import __version__

    deepspeed = None
    if importlib.util.find_spec("deepspeed") is not None and cfg.deepspeed is not None:
        import deepspeed as ds

        deepspeed = ds.__version__
    args, datasets = parts.trainer.args, parts.datasets
    return {
        "bbucli": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": deepspeed,
        "python": sys.version.split()[0],
        "world_size": args.world_size,
        "launched": is_launched(os.environ),
        "device": str(args.device),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(resume) if resume else None,
        "train": asdict(datasets.train.stats),
        "val": asdict(datasets.val.stats) if datasets.val else None,
    }
