"""Trainer callbacks of a bbu run: the metrics file and progress reports (they change *when*).

Owns `TrainProgress`, what `run_training(progress=...)` is called with, `ProgressReporter`, which
makes those calls on the main process, and `MetricsFile`, which appends every log to
metrics.jsonl.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from bbucli.train.checkpoint_dirs import CHECKPOINT_PREFIX


@dataclass(frozen=True)
class TrainProgress:
    """What `run_training(progress=...)` is called with, on the main process only.

    kind: "begin", "step", "log", "eval", "save" or "end"; step / max_steps: optimizer steps done
    and planned; epoch: fractional epochs done; elapsed_s: since this process began training;
    logs: the log or eval metrics ("log", "eval"), the latest log otherwise; path: the checkpoint
    folder ("save")."""

    kind: str
    step: int
    max_steps: int
    epoch: float
    elapsed_s: float
    logs: Mapping[str, float] = field(default_factory=dict)
    path: Path | None = None


class MetricsFile(TrainerCallback):
    """Appends every log (training, eval, the final summary) as one JSON line to `path`, on the
    main process; a resumed run appends to the same file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=float) + "\n")


class ProgressReporter(TrainerCallback):
    """Calls `progress(TrainProgress)` on the main process: begin, every step, logs, evals, saves, end."""

    def __init__(self, progress: Callable[[TrainProgress], None]) -> None:
        self.progress = progress
        self.started = time.perf_counter()
        self.last_logs: dict[str, float] = {}

    def _emit(self, kind: str, state, logs=None, path=None) -> None:  # noqa: ANN001
        if not state.is_world_process_zero:
            return
        self.progress(
            TrainProgress(
                kind=kind,
                step=state.global_step,
                max_steps=state.max_steps,
                epoch=state.epoch or 0.0,
                elapsed_s=time.perf_counter() - self.started,
                logs=dict(logs or self.last_logs),
                path=path,
            )
        )

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.started = time.perf_counter()
        self._emit("begin", state)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self._emit("step", state)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        logs = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
        if any(k.startswith("eval_") for k in logs):
            self._emit("eval", state, logs)
        else:
            self.last_logs.update(logs)
            self._emit("log", state, logs)

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        self._emit("save", state, path=path)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self._emit("end", state)
