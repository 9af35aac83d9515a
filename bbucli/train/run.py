"""`run_training(cfg)`: everything `bbu train` does, from a validated config to checkpoints.

Builds, in order: the processor (pixel limits of `model`), the taxonomy and prompts, the datasets
(`data`), the caption vocabulary (descs of the train episodes and the teacher pool), the model
(tiny or a local Qwen2.5-VL folder; fp32 on CPU, bf16 + flash-attention-2 on a GPU when
configured or by "auto"), the multi-task loss and a `BBUTrainer`, then trains.

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

`dry_run=True` builds everything, runs one training batch forward and backward (no optimizer step)
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

from bbucli.errors import ConfigError
from bbucli.train.config.loading import GROUPS, BbuConfig, describe_config
from bbucli.data.dataset import DatasetStats, EpisodeDataset
from bbucli.train.dry_run import DryRunReport, GroupRow, dry_run_batch, remove_empty_tree
from bbucli.train.launch import is_launched, single_process_env
from bbucli.train.trainer import (
    CHECKPOINT_PREFIX,
    RESUME_WEIGHTS,
    TRAINER_STATE,
    TrainProgress,
    latest_checkpoint,
)

__all__ = ["run_training", "TrainResult", "DryRunReport", "GroupRow", "TrainProgress", "resolve_resume"]

FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainResult:
    """What a run did. losses: (step, loss) of every training log of this run (after the resumed
    step when resuming); last_logs: the last training log;
    best_checkpoint / best_metric: by train.metric_for_best_model (None without evaluation);
    final_checkpoint: output_dir/final; resumed_from: the checkpoint resumed, if any;
    train / val: dataset counts of the first epoch; dry_run: set (and nothing else run) for a dry run."""

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
    dry_run: DryRunReport | None = None


@dataclass(frozen=True)
class _Parts:
    """Everything built before training."""

    trainer: Any  # BBUTrainer
    processor: Any  # VLProcessor
    train: EpisodeDataset
    val: EpisodeDataset | None
    taxonomy_yaml: str


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
    if cfg.deepspeed is not None:
        # DeepSpeed needs a process group even for one process; a launcher sets these.
        for key, value in single_process_env(os.environ).items():
            os.environ.setdefault(key, value)
    resume = None if dry_run else resolve_resume(cfg)
    if resume is None and not dry_run:
        _refuse_used_output_dir(cfg)
    existed = Path(cfg.train.output_dir).exists()
    parts = _build(cfg, progress)
    trainer = parts.trainer
    if dry_run:
        report = dry_run_batch(
            trainer, cfg, image_token_id=parts.processor.image_token_id,
            train=parts.train.stats, val=parts.val.stats if parts.val else None,
        )  # fmt: skip
        if not existed:  # the Trainer makes output_dir; a dry run leaves no trace
            remove_empty_tree(Path(cfg.train.output_dir))
        return TrainResult(
            output_dir=cfg.train.output_dir, world_size=trainer.args.world_size,
            train=parts.train.stats, val=parts.val.stats if parts.val else None, dry_run=report,
        )  # fmt: skip
    if trainer.args.should_save:
        _write_run_folder(cfg, parts, trainer, resume)

    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = Path(cfg.train.output_dir) / FINAL_DIR
    trainer.save_model(str(final))
    state = trainer.state
    # A resumed run's history starts with the checkpoint's: keep what this run logged.
    start = json.loads((resume / TRAINER_STATE).read_text())["global_step"] if resume else 0
    history = [dict(h) for h in state.log_history if h.get("step", 0) > start]
    losses = tuple((int(h["step"]), float(h["loss"])) for h in history if "loss" in h)
    last = next((h for h in reversed(history) if "loss" in h), {})
    evals = next((h for h in reversed(history) if "eval_loss" in h), {})
    return TrainResult(
        output_dir=Path(cfg.train.output_dir),
        global_step=state.global_step,
        epoch=float(state.epoch or 0.0),
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        runtime_s=time.perf_counter() - started,
        losses=losses,
        last_logs={k: v for k, v in last.items() if isinstance(v, int | float)},
        eval_metrics={k: v for k, v in evals.items() if isinstance(v, int | float)},
        final_checkpoint=final,
        best_checkpoint=Path(state.best_model_checkpoint) if state.best_model_checkpoint else None,
        best_metric=state.best_metric,
        metric_for_best=trainer.args.metric_for_best_model,
        resumed_from=resume,
        world_size=trainer.args.world_size,
        train=parts.train.stats,
        val=parts.val.stats if parts.val else None,
    )


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
                f"train.resume is true, but {cfg.train.output_dir} holds no complete {CHECKPOINT_PREFIX}N folder",
                hint="start a fresh run (train.resume=false), or point train.resume at a checkpoint",
            )  # fmt: skip
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
            hint="resume it with deepspeed=null, or start the DeepSpeed run fresh",
        )
    if cfg.deepspeed is None and not (folder / RESUME_WEIGHTS).is_file():
        raise ConfigError(
            f"{folder} was written by a DeepSpeed run (or lacks {RESUME_WEIGHTS}), but this run has no deepspeed section",
            hint="resume it with the same deepspeed config it was trained with",
        )  # fmt: skip
    return folder


# ---- building ----------------------------------------------------------------------------------


def _build(cfg: BbuConfig, progress: Callable[[TrainProgress], None] | None) -> _Parts:
    import torch
    from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed

    from bbucli.chat.loading import load_processor
    from bbucli.chat.processor import ChatProcessor
    from bbucli.chat.prompts import build_prompts
    from bbucli.data.collators import PackedDataCollator, StandardDataCollator
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.checkpoint import save_checkpoint
    from bbucli.model.loading import load_model
    from bbucli.loss.multitask import (
        CaptionTargets,
        LossWeights,
        MultiTaskLoss,
        build_caption_vocab,
    )
    from bbucli.model.param_groups import build_param_groups
    from bbucli.schema import read_episodes
    from bbucli.taxonomy import Taxonomy, default_path
    from bbucli.train.trainer import Batching, BBUTrainer, MetricsFile, ProgressReporter

    set_seed(cfg.model.seed)
    data = cfg.data
    processor = load_processor(cfg.model.path, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels)
    taxonomy_file = data.taxonomy or default_path()
    taxonomy = Taxonomy.load(taxonomy_file)
    taxonomy_yaml = Path(taxonomy_file).read_text(encoding="utf-8")
    prompts = build_prompts(taxonomy.descs(data.lang), data.lang, list_classes=data.prompt_classes)
    chat = ChatProcessor(
        processor, system_prompt=prompts.system, instruction=prompts.instruction,
        max_tokens=data.max_tokens, min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels,
    )  # fmt: skip

    train_episodes = read_episodes(data.train)
    pool = [e.student for e in read_episodes(data.teachers)] if data.teachers else []
    train = EpisodeDataset(
        train_episodes, chat, data.image_root, num_teachers=data.num_teachers,
        teacher_pool=pool, resample=data.teacher_resample, seed=cfg.model.seed, name="train",
    )  # fmt: skip
    val = None
    if data.val is not None:
        val = EpisodeDataset(read_episodes(data.val), chat, data.image_root,
                             num_teachers=data.num_teachers, name="val")  # fmt: skip

    vocab = None
    if cfg.detection.captions:
        descs = {o.desc for e in train_episodes for s in e.samples for o in s.objects}
        descs |= {o.desc for s in pool for o in s.objects}
        vocab = build_caption_vocab(processor.tokenizer, sorted(descs))

    qwen = load_model(cfg.model.path, dtype=None if cfg.model.dtype == "auto" else cfg.model.dtype,
                      attn_implementation=None if cfg.model.attn == "auto" else cfg.model.attn,
                      seed=cfg.model.seed)  # fmt: skip
    head_config = cfg.detection.head_config(int(qwen.config.text_config.hidden_size),
                                            vocab.size if vocab is not None else 0)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model.seed)  # the head's initial weights follow model.seed
        model = BBUModel(qwen, head_config, caption_vocab=vocab, text_layer=cfg.detection.text_layer,
                         vision_source=cfg.detection.vision_source)
    lrs = {g: float(getattr(cfg.optim.lrs, g)) for g in GROUPS}
    build_param_groups(model, lrs, cfg.optim.weight_decay)  # freezes lr-0 groups before any wrapping

    weights = LossWeights(**{k: getattr(cfg.loss, k) for k in LossWeights.__dataclass_fields__})
    captions = CaptionTargets(processor.tokenizer, vocab, cfg.detection.caption_max_len) if vocab else None
    loss = MultiTaskLoss(
        weights, captions=captions, cost_obj=cfg.loss.cost_obj, cost_bbox=cfg.loss.cost_bbox,
        cost_giou=cfg.loss.cost_giou, cost_center=cfg.loss.cost_center, focal_alpha=cfg.loss.focal_alpha,
        focal_gamma=cfg.loss.focal_gamma, aux=cfg.loss.aux, token_aux=cfg.loss.token_aux,
        lm_max_tokens=cfg.loss.lm_max_tokens, token_matches=cfg.loss.token_matches,
    )  # fmt: skip

    kwargs = cfg.training_arguments()
    if not torch.cuda.is_available():
        # accelerate only sets up a CPU process group (gloo) with use_cpu: without it, every rank
        # a launcher starts on a machine without GPUs believes it is alone (world size 1).
        kwargs.setdefault("use_cpu", True)
    for key, value in {
        "remove_unused_columns": False,  # batches are dicts bbu builds, not HF datasets columns
        "label_names": ["labels"],
        "prediction_loss_only": True,
        "disable_tqdm": True,  # progress goes through `progress`; the library never prints
        "ddp_find_unused_parameters": False,  # the loss uses head parameters outside forward
        "save_safetensors": True,
    }.items():
        if key in _argument_names():
            kwargs.setdefault(key, value)
    args = TrainingArguments(**kwargs)

    config_yaml = describe_config(cfg)

    def save_fn(folder: Path, bbu: BBUModel, extra: dict[str, Any]) -> None:
        save_checkpoint(folder, bbu, processor, config_yaml=config_yaml, taxonomy_yaml=taxonomy_yaml,
                        extra=extra, prompts=prompts)  # fmt: skip

    collator = PackedDataCollator() if data.packing else StandardDataCollator(_pad_id(processor))
    callbacks = [MetricsFile(Path(cfg.train.output_dir) / METRICS_FILE)]
    if progress is not None:
        callbacks.append(ProgressReporter(progress))
    trainer = BBUTrainer(
        model, args=args, loss=loss, lrs=lrs, image_token_id=processor.image_token_id,
        batching=Batching(data.packing, data.max_tokens_per_batch, data.batch_size, data.group_by_length),
        save_fn=save_fn, train_dataset=train, eval_dataset=val, data_collator=collator,
        callbacks=callbacks,
    )  # fmt: skip
    for default in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(default)
    return _Parts(trainer, processor, train, val, taxonomy_yaml)


def _argument_names() -> set[str]:
    from bbucli.train.config.passthrough import training_argument_fields

    return set(training_argument_fields())


def _pad_id(processor: Any) -> int:
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>"))


def _check_reporting(cfg: BbuConfig) -> None:
    report = cfg.train.arguments.get("report_to")
    wanted = [report] if isinstance(report, str) else list(report or [])
    if "tensorboard" in wanted and not any(
        importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")
    ):
        raise ConfigError(
            "train.report_to asks for tensorboard, but neither tensorboard nor tensorboardX is installed",
            hint="pip install tensorboard, or set train.report_to=none",
        )


def _refuse_used_output_dir(cfg: BbuConfig) -> None:
    found = latest_checkpoint(cfg.train.output_dir)
    if found is not None:
        raise ConfigError(
            f"train.output_dir {cfg.train.output_dir} already holds checkpoints ({found.name}): a fresh "
            "run there would mix its checkpoints with the old run's",
            hint="continue it with train.resume=true (or --resume DIR), or choose another train.output_dir",
        )  # fmt: skip


def _write_run_folder(cfg: BbuConfig, parts: _Parts, trainer: Any, resume: Path | None) -> None:
    import torch
    import transformers

    from bbucli import __version__

    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(describe_config(cfg), encoding="utf-8")
    (out / "taxonomy.yaml").write_text(parts.taxonomy_yaml, encoding="utf-8")
    deepspeed = None
    if importlib.util.find_spec("deepspeed") is not None and cfg.deepspeed is not None:
        import deepspeed as ds

        deepspeed = ds.__version__
    info = {
        "bbucli": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "deepspeed": deepspeed, "python": sys.version.split()[0],
        "world_size": trainer.args.world_size, "launched": is_launched(os.environ),
        "device": str(trainer.args.device), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": str(resume) if resume else None,
        "train": asdict(parts.train.stats), "val": asdict(parts.val.stats) if parts.val else None,
    }  # fmt: skip
    (out / "run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
