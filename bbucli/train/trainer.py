"""`BBUTrainer`: the transformers Trainer with BBUModel's multi-task loss.

Only documented hooks are overridden:
- `compute_loss`: `BBUModel` forward + `MultiTaskLoss`; a NaN or inf loss (or non-finite
  predictions, which the matcher meets first) raises `TrainingDiverged` naming the step (a
  non-finite loss on every rank together), so the run stops before the optimizer sees it and the
  last checkpoint stays the last good one. Nothing is replaced by a constant. It also counts the
  samples the batch left out because their images could not be read (`batch["unreadable"]`,
  from `SkipUnreadable`) in `unreadable`; past `unreadable_limit` of the train split the run
  stops with a DataError, on every rank together.
- `create_optimizer`: the five parameter groups of `build_param_groups`, each with its own learning
  rate (`optim.lrs`; 0 freezes a group), in the optimizer class `train.optim` names.
- `get_train_dataloader` / `get_eval_dataloader`: token-budget bins (packed rows) or fixed-size
  batches (padded rows) from `EpochBatches`, sharded over ranks by bbu itself.
- `save_model`: writes the bbu checkpoint layout (`save_fn`, i.e. `save_checkpoint`) into the
  folder, plus `model.safetensors` in the Trainer's own checkpoints of a run without DeepSpeed
  (what the Trainer reloads on resume; under DeepSpeed the engine's `global_step*/` holds it).
  That file holds what trains and the buffers, not the frozen parameters
  (`bbucli.train.resume_state`).
- `log`: adds to each training log every loss component (means over the logging window, this
  rank's), the learning rate of every group used by the last step (`lr_<group>`), tokens/s (this
  rank's rate times the world size, evaluation time left out), the vision-token share and the
  padding fraction (the unused share of the packed rows' token budget, or the padded share of
  padded batches), summed by `bbucli.train.meter.StepMeter`; eval logs get `eval_<component>`.

Callbacks (`MetricsFile`, `ProgressReporter`, in `bbucli.train.callbacks`) change *when* things are
written or reported; the checkpoint-N folder names are in `bbucli.train.checkpoint_dirs`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer

from bbucli.data.dataset import (
    EpisodeDataset,
    EpochBatches,
    EpochDataLoader,
    SkipUnreadable,
    unreadable_limit,
)
from bbucli.errors import BbuError, ConfigError, DataError
from bbucli.loss.matcher import MatchingError
from bbucli.loss.multitask import LossBreakdown, MultiTaskLoss
from bbucli.model.bbu_model import BBUModel
from bbucli.model.param_groups import build_param_groups
from bbucli.train.callbacks import MetricsFile, ProgressReporter, TrainProgress
from bbucli.train.checkpoint_dirs import (
    CHECKPOINT_PREFIX,
    RESUME_WEIGHTS,
    TRAINER_STATE,
    latest_checkpoint,
)
from bbucli.train.meter import StepMeter
from bbucli.train.resume_state import frozen_keys, resume_state

# Also the public names of the callbacks and checkpoint folders, which callers import from here.
__all__ = [
    "BBUTrainer",
    "Batching",
    "SaveFn",
    "TrainingDiverged",
    "TrainProgress",
    "MetricsFile",
    "ProgressReporter",
    "CHECKPOINT_PREFIX",
    "RESUME_WEIGHTS",
    "TRAINER_STATE",
    "latest_checkpoint",
]


#: save_fn(folder, model, extra): writes the bbu checkpoint layout (run.py binds the processor,
#: config, taxonomy and prompts).
SaveFn = Callable[[Path, BBUModel, dict[str, Any]], None]


class TrainingDiverged(BbuError):
    """The training loss became NaN or inf; the run stopped before the optimizer step."""


@dataclass(frozen=True)
class Batching:
    """How batches are made. packed: one row of at most max_tokens_per_batch tokens per step;
    else batch_size samples padded to the longest, of similar lengths when group_by_length."""

    packed: bool
    max_tokens_per_batch: int
    batch_size: int = 1
    group_by_length: bool = False


class BBUTrainer(Trainer):
    """The Trainer for a `BBUModel` (see the module docstring).

    model: the BBUModel (not wrapped); loss: its `MultiTaskLoss`; lrs: learning rate per group;
    batching: packed or padded batches; image_token_id: `<|image_pad|>` (vision-token share);
    save_fn: writes the bbu checkpoint layout. Other keywords go to `Trainer` (args,
    train_dataset / eval_dataset: `EpisodeDataset`s, data_collator, callbacks).
    """

    def __init__(
        self,
        model: BBUModel,
        *,
        loss: MultiTaskLoss,
        lrs: Mapping[str, float],
        batching: Batching,
        image_token_id: int,
        save_fn: SaveFn | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, **kwargs)
        self.loss_fn = loss
        self.lrs = dict(lrs)
        self.batching = batching
        self.image_token_id = int(image_token_id)
        self.save_fn = save_fn
        # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._train_meter = StepMeter()
        self._eval_meter = StepMeter()
        self._step_lrs: dict[str, float] = {}
        #: Samples skipped because their images could not be read: student image -> reason.
        self.unreadable: dict[str, str] = {}
        model._keys_to_ignore_on_save = frozen_keys(model) or None

    # ---- the loss ------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """`model` may be wrapped (DDP, DeepSpeed engine); the loss reads the BBUModel itself."""
        started = time.perf_counter()
        self.unreadable.update(inputs.pop("unreadable", ()))
        output = model(inputs)
        training = self.model.training
        # Steps are counted from 1, as logged: the one being computed while training.
        step = self.state.global_step + (1 if training else 0)
        problem = None
        try:
            breakdown = self.loss_fn(self.model, output, inputs, step=step)
        except MatchingError as exc:
            if not training:
                raise
            # Non-finite predictions reach the matcher before they reach the loss.
            breakdown, problem = None, f"the predictions are not finite ({exc.message})"
        budget = self.batching.max_tokens_per_batch if self.batching.packed else None
        if training:
            self._check_finite(breakdown, problem)
            self._train_meter.add(breakdown, inputs, self.image_token_id, budget, started)
            # The rates this step's optimizer update uses (the scheduler steps after it).
            self._step_lrs = self.group_learning_rates()
        else:
            self._eval_meter.add(breakdown, inputs, self.image_token_id, budget, started)
        if return_outputs:
            return breakdown.total, {"loss": breakdown.total, "output": output, **breakdown.losses}
        return breakdown.total

    def _check_finite(self, breakdown: LossBreakdown | None, problem: str | None) -> None:
        """Raise TrainingDiverged on every rank together when any rank's loss is NaN or inf (or
        its loss could not be computed: `problem`)."""
        device = self.args.device
        own_bad = problem is not None or not bool(torch.isfinite(breakdown.total.detach()))
        limit = unreadable_limit(len(self.train_dataset))
        own_unreadable = len(self.unreadable) > limit
        bad = torch.tensor([float(own_bad), float(own_unreadable)], device=device)
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad[1].item()):
            self._too_many_unreadable(limit, own_unreadable)
        if not bool(bad[0].item()):
            return
        if problem is not None:
            what = problem
        elif own_bad:
            what = f"the loss is {float(breakdown.total)}"
            broken = [k for k, v in breakdown.losses.items() if not math.isfinite(float(v))]
            if broken:
                what += f" (non-finite: {', '.join(broken)})"
        else:
            what = "another rank's loss is not finite"
        self._diverged(self.state.global_step + 1, what)

    def _too_many_unreadable(self, limit: int, own: bool) -> None:
        shown = "; ".join(list(self.unreadable.values())[:3])
        what = f"{len(self.unreadable)} samples" if own else "another rank's samples"
        raise DataError(
            f"training stopped at step {self.state.global_step + 1}: {what} skipped because their "
            f"images cannot be read, more than the {limit} tolerated (max(10, 1% of "
            f"{len(self.train_dataset)})): {shown}",
            hint="`bbu inspect FILE --verify-images` lists them by line; re-export or remove "
            "them, then resume with `--resume CHECKPOINT`",
        )

    def _diverged(self, step: int, what: str) -> None:
        last = latest_checkpoint(self.args.output_dir)
        kept = (
            f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        )
        raise TrainingDiverged(
            f"training diverged at step {step}: {what}; the run stopped before the optimizer step, {kept}",
            hint="lower optim.lrs (or raise train.warmup_steps), check that step's data with "
            "`bbu inspect`, then resume with `--resume CHECKPOINT`",
        )

    # ---- the optimizer ------------------------------------------------------------------------

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The optimizer `train.optim` names over `build_param_groups` (per-group learning rates)."""
        if self.optimizer is None:
            groups = build_param_groups(self.model, self.lrs, self.args.weight_decay)
            if not groups:
                raise ConfigError(
                    "no parameter is left to train", hint="give some group in optim.lrs a rate > 0"
                )
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            if {"params", "model", "optimizer_dict"} & set(kwargs):
                raise ConfigError(
                    f"train.optim {self.args.optim!r} builds its own parameter groups, but bbu "
                    "trains five groups with their own learning rates",
                    hint="use train.optim adamw_torch (the default) or another plain torch optimizer",
                )
            self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def group_learning_rates(self) -> dict[str, float]:
        """`lr_<group>`: the current learning rate of every trained group."""
        if self.optimizer is None:
            return {}
        out: dict[str, float] = {}
        for i, group in enumerate(self.optimizer.param_groups):
            out.setdefault(f"lr_{group.get('group', i)}", float(group["lr"]))
        return out

    # ---- data ----------------------------------------------------------------------------------

    def _loader(self, dataset: EpisodeDataset, shuffle: bool) -> EpochDataLoader:
        batches = EpochBatches(
            dataset,
            packed=self.batching.packed,
            max_tokens_per_batch=self.batching.max_tokens_per_batch,
            batch_size=self.batching.batch_size,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            shuffle=shuffle,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
            group_by_length=self.batching.group_by_length,
        )
        workers = self.args.dataloader_num_workers
        extra = {"prefetch_factor": self.args.dataloader_prefetch_factor} if workers else {}
        return EpochDataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=SkipUnreadable(self.data_collator, dataset),
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            **extra,
        )

    def get_train_dataloader(self) -> EpochDataLoader:
        """Per-epoch batches of the train split; not wrapped by accelerate (bbu shards itself and
        the Trainer moves each batch to the device)."""
        if self.train_dataset is None:
            raise ValueError("BBUTrainer needs a train_dataset")
        return self._loader(self.train_dataset, shuffle=True)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> EpochDataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("BBUTrainer: evaluation needs an eval_dataset (data.val)")
        return self._loader(dataset, shuffle=False)

    # ---- saving --------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The bbu checkpoint layout in `output_dir` (main process), and in the Trainer's own
        checkpoints of a run without DeepSpeed also `model.safetensors` for resuming."""
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        with self._full_parameters():
            if self.args.should_save:
                if self.save_fn is not None:
                    extra = {"step": self.state.global_step, "epoch": self.state.epoch}
                    self.save_fn(folder, self.model, extra)
                if _internal_call and not self.is_deepspeed_enabled:
                    from safetensors.torch import save_file

                    folder.mkdir(parents=True, exist_ok=True)
                    save_file(
                        resume_state(self.model),
                        str(folder / RESUME_WEIGHTS),
                        metadata={"format": "pt"},
                    )
        # Other ranks write into the same folder next (DeepSpeed's engine state): not before the
        # main process has put the folder in place.
        if self.args.world_size > 1:
            self.accelerator.wait_for_everyone()

    @contextmanager
    def _full_parameters(self):
        """Under ZeRO-3 the parameters are partitioned: gather them for the save."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(
                list(self.model.parameters()), modifier_rank=None
            ):
                yield
        else:
            yield

    # ---- logging -------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds bbu's per-step values to training logs and loss components to eval logs."""
        if "loss" in logs:
            logs.update(self._train_meter.flush(world_size=self.args.world_size))
            logs.update(self._step_lrs or self.group_learning_rates())
            if self.unreadable:
                logs["unreadable_samples"] = len(self.unreadable)
        elif "eval_loss" in logs:
            logs.update(self._eval_meter.flush(prefix="eval_", throughput=False))
            self._train_meter.since = time.perf_counter()  # tokens/s counts training time only
        super().log(logs, start_time)
