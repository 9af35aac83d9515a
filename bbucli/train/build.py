"""Everything a run builds before training, one named step each, in the order `build_run` calls
them: the conversation (processor, taxonomy, the data's classes, prompts), the datasets, the
caption vocabulary, the model, the loss (freezing the parameters it never reaches), the
`TrainingArguments` and the `BBUTrainer`.

The order is part of the behaviour: `set_seed(model.seed)` comes first, then the steps draw from
the random generators as listed (the model's weights follow `model.seed` on their own), so a run
and its resumed copy build the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbucli.train.build_data import (
    Conversation,
    Datasets,
    build_conversation,
    load_datasets,
    teachers_to_carry,
)
from bbucli.train.config.loading import GROUPS, BbuConfig, describe_config
from bbucli.train.trainer import TrainProgress

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from bbucli.chat.loading import VLProcessor
    from bbucli.loss.multitask import MultiTaskLoss
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.caption_vocab import CaptionVocab
    from bbucli.model.lora import LoraRecord
    from bbucli.model.trained_with import TrainedWith
    from bbucli.train.trainer import BBUTrainer

METRICS_FILE = "metrics.jsonl"

# TrainingArguments bbu always sets (when this transformers version has them).
_FIXED_ARGUMENTS = {
    "remove_unused_columns": False,  # batches are dicts bbu builds, not HF datasets columns
    "label_names": ["labels"],
    "prediction_loss_only": True,
    # The caption loss runs head parameters outside forward, which DDP's unused-parameter search
    # would mark ready twice; parameters no loss term reaches are frozen instead (`freeze_idle`).
    "ddp_find_unused_parameters": False,
    "disable_tqdm": True,  # progress goes through `progress`; the library never prints
    "save_safetensors": True,
}


@dataclass(frozen=True)
class RunParts:
    """Everything built before training."""

    trainer: BBUTrainer
    conversation: Conversation
    datasets: Datasets


def build_run(cfg: BbuConfig, progress: Callable[[TrainProgress], None] | None) -> RunParts:
    """Seed, then build every part of the run in order (see the module docstring)."""
    from transformers import set_seed

    set_seed(cfg.model.seed)
    conversation = build_conversation(cfg)
    datasets = load_datasets(cfg, conversation.chat)
    vocab = build_vocabulary(cfg, conversation.processor, conversation.classes)
    lrs = learning_rates(cfg)
    model = build_model(cfg, vocab, lrs)
    loss = build_loss(cfg, conversation.processor, vocab)
    freeze_idle(model, loss)
    args = training_arguments(cfg)
    trainer = build_trainer(cfg, model, loss, lrs, args, conversation, datasets, progress)
    return RunParts(trainer, conversation, datasets)


def build_vocabulary(
    cfg: BbuConfig, processor: VLProcessor, descs: tuple[str, ...]
) -> CaptionVocab | None:
    """The caption vocabulary of `descs` (None when `detection.captions` is off)."""
    from bbucli.loss.multitask import build_caption_vocab

    if not cfg.detection.captions:
        return None
    return build_caption_vocab(processor.tokenizer, list(descs))


def learning_rates(cfg: BbuConfig) -> dict[str, float]:
    """Parameter group -> learning rate (`optim.lrs`; 0 freezes the group)."""
    return {group: float(getattr(cfg.optim.lrs, group)) for group in GROUPS}


def build_model(cfg: BbuConfig, vocab: CaptionVocab | None, lrs: dict[str, float]) -> BBUModel:
    """Qwen2.5-VL (`model.path`, dtype and attention as configured, "auto" left to
    `load_model`) with the detection head, whose initial weights follow `model.seed`; the groups
    with learning rate 0 are frozen here, before any wrapping. With `model.lora`, peft's adapters
    (initial weights from `model.seed` too) are injected into the Qwen part, whose own weights
    are frozen except the merger's (trained unless its learning rate is 0)."""
    import torch

    from bbucli.model.loading import load_model
    from bbucli.model.param_groups import build_param_groups

    model = cfg.model
    # Half weights without DeepSpeed load fp32 and train under autocast (`BbuConfig.autocast`).
    # Not under LoRA: the base is frozen, so it stays half (16.6 GB for 7B instead of 33) and only
    # what trains (adapters, merger, head) is kept fp32.
    autocast = cfg.autocast(torch.cuda.is_available())
    fp32_master = autocast is not None and model.lora is None
    qwen = load_model(
        model.path,
        dtype="fp32" if fp32_master else None if model.dtype == "auto" else model.dtype,
        attn_implementation=None if model.attn == "auto" else model.attn,
        seed=model.seed,
    )
    bbu = attach_head(cfg, qwen, vocab)
    if model.lora is not None:
        from bbucli.model.lora import apply_lora

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model.seed)
            apply_lora(qwen, model.lora.spec(), base=model.path)
        merger = qwen.model.visual.merger
        merger.requires_grad_(True)
        if autocast is not None and lrs["merger"] > 0:
            merger.float()  # trained: fp32 master weights, like the adapters
    build_param_groups(bbu, lrs, cfg.optim.weight_decay)
    return bbu


def attach_head(cfg: BbuConfig, qwen: Any, vocab: CaptionVocab | None) -> BBUModel:
    """`qwen` with the detection head of the `detection` section, its initial weights drawn
    from `model.seed` (the global RNG left as it was), on the current default device."""
    import torch

    from bbucli.model.bbu_model import BBUModel

    hidden = int(qwen.config.text_config.hidden_size)
    head_config = cfg.detection.head_config(hidden, vocab.size if vocab is not None else 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.model.seed)
        return BBUModel(
            qwen,
            head_config,
            caption_vocab=vocab,
            text_layer=cfg.detection.text_layer,
            vision_source=cfg.detection.vision_source,
        )


def build_loss(cfg: BbuConfig, processor: VLProcessor, vocab: CaptionVocab | None) -> MultiTaskLoss:
    """The multi-task loss of the `loss` section (caption targets when there is a vocabulary)."""
    from bbucli.loss.matcher import HungarianMatcher
    from bbucli.loss.multitask import CaptionTargets, LossWeights, MultiTaskLoss

    loss = cfg.loss
    weights = LossWeights(**{k: getattr(loss, k) for k in LossWeights.__dataclass_fields__})
    matcher = HungarianMatcher(
        cost_obj=loss.cost_obj,
        cost_bbox=loss.cost_bbox,
        cost_giou=loss.cost_giou,
        cost_center=loss.cost_center,
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
    )
    captions = None
    if vocab:
        captions = CaptionTargets(processor.tokenizer, vocab, cfg.detection.caption_max_len)
    return MultiTaskLoss(
        weights,
        matcher=matcher,
        captions=captions,
        aux=loss.aux,
        token_aux=loss.token_aux,
        lm_max_tokens=loss.lm_max_tokens,
        token_matches=loss.token_matches,
    )


def freeze_idle(model: BBUModel, loss: MultiTaskLoss) -> list[str]:
    """Freeze the parameters the loss never sends a gradient to (`MultiTaskLoss.idle_parameters`:
    a term weighted 0, `loss.token_aux` off, ...) and return their names. AdamW leaves them
    unchanged anyway, but DDP expects a gradient for every trainable parameter: without this the
    second step fails on several devices."""
    idle = set(loss.idle_parameters(model))
    for name, param in model.named_parameters():
        if name in idle:
            param.requires_grad_(False)
    return sorted(idle)


def training_arguments(cfg: BbuConfig) -> TrainingArguments:
    """`TrainingArguments` of the config, plus what bbu always sets (`_FIXED_ARGUMENTS`) and the
    autocast of half weights kept fp32 (`BbuConfig.autocast`), unless the train section sets
    them."""
    import torch
    from transformers import TrainingArguments

    from bbucli.train.config.passthrough import training_argument_fields

    kwargs = cfg.training_arguments()
    autocast = cfg.autocast(torch.cuda.is_available())
    if autocast is not None:
        kwargs.setdefault(autocast, True)
    if not torch.cuda.is_available():
        # accelerate only sets up a CPU process group (gloo) with use_cpu: without it, every rank
        # a launcher starts on a machine without GPUs believes it is alone (world size 1).
        kwargs.setdefault("use_cpu", True)
    known = set(training_argument_fields())
    for key, value in _FIXED_ARGUMENTS.items():
        if key in known:
            kwargs.setdefault(key, value)
    return TrainingArguments(**kwargs)


def trained_with(cfg: BbuConfig, classes: tuple[str, ...]) -> TrainedWith:
    """What every checkpoint of the run records of its config, and its data's `classes`, for
    inference."""
    from bbucli.model.trained_with import TrainedWith

    data = cfg.data
    return TrainedWith(
        lang=data.lang,
        prompt_classes=data.prompt_classes,
        max_tokens=data.max_tokens,
        num_teachers=data.num_teachers,
        taxonomy=data.taxonomy,
        val=data.val,
        classes=classes,
    )


def build_trainer(
    cfg: BbuConfig,
    model: BBUModel,
    loss: MultiTaskLoss,
    lrs: dict[str, float],
    args: TrainingArguments,
    conversation: Conversation,
    datasets: Datasets,
    progress: Callable[[TrainProgress], None] | None,
) -> BBUTrainer:
    """The `BBUTrainer`: batching of the `data` section, checkpoints in the bbu layout (with the
    resolved config, taxonomy, prompts, `TrainedWith` and the inference teachers), metrics.jsonl,
    and `progress` in place of the Trainer's own printing."""
    from transformers import PrinterCallback, ProgressCallback

    from bbucli.data.collators import PackedDataCollator, StandardDataCollator
    from bbucli.model.checkpoint import save_checkpoint
    from bbucli.train.trainer import Batching, BBUTrainer, MetricsFile, ProgressReporter

    data, processor = cfg.data, conversation.processor
    config_yaml = describe_config(cfg)
    facts = trained_with(cfg, conversation.classes)
    teachers = teachers_to_carry(datasets.train, data.num_teachers)
    lora = lora_record(cfg, lrs)

    def save_fn(folder: Path, bbu: BBUModel, extra: dict[str, Any]) -> None:
        save_checkpoint(
            folder,
            bbu,
            processor,
            config_yaml=config_yaml,
            taxonomy_yaml=conversation.taxonomy_yaml,
            extra=extra,
            prompts=conversation.prompts,
            trained_with=facts,
            teachers=teachers,
            lora=lora,
        )

    collator = PackedDataCollator() if data.packing else StandardDataCollator(_pad_id(processor))
    callbacks = [MetricsFile(Path(cfg.train.output_dir) / METRICS_FILE)]
    if progress is not None:
        callbacks.append(ProgressReporter(progress))
    batching = Batching(
        data.packing, data.max_tokens_per_batch, data.batch_size, data.group_by_length
    )
    trainer = BBUTrainer(
        model,
        args=args,
        loss=loss,
        lrs=lrs,
        image_token_id=processor.image_token_id,
        batching=batching,
        save_fn=save_fn,
        train_dataset=datasets.train,
        eval_dataset=datasets.val,
        data_collator=collator,
        callbacks=callbacks,
    )
    for default in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(default)
    return trainer


def lora_record(cfg: BbuConfig, lrs: dict[str, float]) -> LoraRecord | None:
    """What checkpoints keep of `model.lora` (None without it): the adapter, its base
    (`model.path`, `model.seed`) and whether the merger trains (its learning rate is not 0)."""
    from bbucli.model.lora import LoraRecord

    model = cfg.model
    if model.lora is None:
        return None
    return LoraRecord(model.lora.spec(), model.path, model.seed, lrs["merger"] > 0)


def _pad_id(processor: VLProcessor) -> int:
    """The tokenizer's pad id, else `<|endoftext|>`'s."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>"))
