"""The training config's schema: one pydantic model per YAML section, and the whole run's model.

    model:      which Qwen2.5-VL, dtype, attention, pixel limits, seed
    data:       JSONL files, language, token budgets, packing, teachers, workers
    detection:  the detection head's sizes (HeadConfig), which hidden layer feeds it, captions
    loss:       the six multi-task weights, matcher costs, focal alpha/gamma
    optim:      a learning rate per parameter group (0 freezes it), weight decay, betas, eps
    train:      transformers TrainingArguments fields, passed through and checked by name and type
    deepspeed:  null, a path to a DeepSpeed JSON, or the same JSON inline

Every field carries a `description`: the README's config reference is generated from them
(`tools.config_reference`). The loss and optim sections live in `bbucli.train.config.objective`,
the strict scalar types and the section base in `bbucli.train.config.fields`. Loading, overrides
and validation live in `bbucli.train.config.loading`, which re-exports these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bbucli.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from bbucli.model.lora import DEFAULT_TARGETS
from bbucli.train.config.deepspeed_checks import effective_dtype
from bbucli.train.config.fields import Bool, Float, Int, Section, Str
from bbucli.train.config.objective import GROUPS, LossSection, OptimSection
from bbucli.train.config.overrides import dump_yaml
from bbucli.train.config.passthrough import train_argument_problems

if TYPE_CHECKING:
    from bbucli.model.head import HeadConfig
    from bbucli.model.lora import LoraSpec


MIN_PIXELS = DEFAULT_MIN_PIXELS  # the names `loading` re-exports
MAX_PIXELS = DEFAULT_MAX_PIXELS


class LoraSection(Section):
    """LoRA adapters (peft) on the Qwen part: the base weights are frozen, the adapters join the
    parameter group of the module they wrap (optim.lrs.llm, optim.lrs.vision)."""

    r: Int = Field(16, ge=1, description="adapter rank")
    alpha: Float = Field(32.0, gt=0.0, description="adapter scale numerator (scale alpha / r)")
    dropout: Float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter's input")
    targets: list[Str] = Field(
        list(DEFAULT_TARGETS),
        min_length=1,
        description="Linear modules to adapt, by name: the LLM's q_proj, k_proj, v_proj, o_proj, "
        "gate_proj, up_proj, down_proj; the ViT's with a visual. prefix (visual.qkv, visual.proj, "
        "visual.gate_proj, visual.up_proj, visual.down_proj)",
    )

    def spec(self) -> LoraSpec:
        """The `LoraSpec` the model is built with."""
        from bbucli.model.lora import LoraSpec

        return LoraSpec(self.r, float(self.alpha), float(self.dropout), tuple(self.targets))


class ModelSection(Section):
    """Which Qwen2.5-VL, its dtype and attention kernel, the processor's pixel limits, the seed."""

    path: Str = Field(
        "tiny",
        description='"tiny" (random-weight test model, nothing downloaded) or a local Qwen2.5-VL '
        "checkpoint folder",
    )
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description='weight dtype; "auto": fp32 for tiny and on a CPU, bf16 for a folder on a GPU. '
        "Without a deepspeed section, bf16/fp16 load fp32 master weights and autocast the forward "
        "(train.bf16/fp16 on): torch AdamW on half weights would drop most small updates",
    )
    attn: Literal["auto", "sdpa_varlen", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description='attention kernel; "auto": flash_attention_2 when flash-attn is installed, a GPU '
        'is there and the dtype is half, else sdpa_varlen (sdpa run sample by sample in packed '
        'rows, no L x L mask); "sdpa": transformers\' sdpa with its dense packed-row mask',
    )
    min_pixels: Int = Field(
        MIN_PIXELS,
        ge=1,
        description="the processor's smart_resize lower pixel limit (at least `4*28*28`); keep equal to "
        "`bbu convert --min-pixels`",
    )
    max_pixels: Int = Field(
        MAX_PIXELS,
        ge=1,
        description="the processor's smart_resize upper pixel limit; keep equal to "
        "`bbu convert --max-pixels` so images are not resized twice",
    )
    seed: Int = Field(
        0, description="seed of the random weights (tiny, detection head) and of the Trainer"
    )
    lora: LoraSection | None = Field(
        None,
        description="LoRA adapters (peft) on the Qwen part, base weights frozen, the head and the "
        "merger trained as optim.lrs says: `{r: 16, alpha: 32, dropout: 0.05, targets: [q_proj, "
        "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}` (the defaults; ViT targets take a "
        "visual. prefix: visual.qkv, visual.proj, visual.gate_proj, visual.up_proj, "
        "visual.down_proj); null: full fine-tuning",
    )


class DataSection(Section):
    """The JSONL files `bbu convert` wrote (OUT.jsonl, OUT.val.jsonl, OUT.teachers.jsonl), the
    prompt language, token budgets, packing, teachers per student and DataLoader workers."""

    train: Path = Field(description="training JSONL written by `bbu convert` (OUT.jsonl)")
    val: Path | None = Field(
        None, description="validation JSONL (OUT.val.jsonl); null: no evaluation"
    )
    teachers: Path | None = Field(
        None,
        description="teacher pool JSONL (OUT.teachers.jsonl), what teacher_resample draws from",
    )
    image_root: Path | None = Field(
        None, description="folder the JSONL image paths are relative to (null: the folder of train)"
    )
    taxonomy: Path | None = Field(
        None, description="taxonomy YAML (null: the built-in one, as `bbu convert`)"
    )
    lang: Literal["zh", "en"] = Field(
        "zh", description="language of the prompts and class descs; match `bbu convert --lang`"
    )
    prompt_classes: Bool = Field(
        True,
        description="list the training data's classes (the descs of data.train and the teacher "
        "pool, as bbu convert wrote them) in the system prompt (~430 tokens for the built-in 22); "
        "false: task and answer format only (~60 tokens)",
    )
    max_tokens: Int = Field(
        4096,
        ge=1,
        description="token budget of one sample: teachers are dropped first, then the sample is skipped",
    )
    packing: Bool = Field(
        True,
        description="one packed row per step of at most max_tokens_per_batch tokens; false: padded "
        "batches of batch_size",
    )
    max_tokens_per_batch: Int = Field(
        8192,
        ge=1,
        description="tokens per packed row (one row per device per step); at least max_tokens",
    )
    batch_size: Int = Field(
        1, ge=1, description="samples per padded batch without packing (1 with packing)"
    )
    group_by_length: Bool = Field(
        False,
        description="padded batches of similar lengths (sorted within windows of 16 batches, "
        "then shuffled): less padding; ignored with packing",
    )
    num_teachers: Int = Field(1, ge=0, description="teachers (in-context examples) per student, K")
    teacher_resample: Bool = Field(
        False,
        description="re-draw every student's teachers from the pool each epoch (needs teachers; "
        "not with train.dataloader_persistent_workers, whose workers would keep epoch 0's)",
    )
    num_workers: Int = Field(0, ge=0, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _default_image_root(self) -> DataSection:
        if self.image_root is None:
            object.__setattr__(self, "image_root", self.train.parent)
        return self


class DetectionSection(Section):
    """`HeadConfig` fields except llm_hidden and caption_vocab_size (known once the model and the
    data are), plus `BBUModel`'s text_layer and whether to build the caption decoder."""

    width: Int = Field(256, ge=1, description="hidden size of the head; divisible by 4 and by heads")
    layers: Int = Field(4, ge=1, description="decoder layers of the head")
    heads: Int = Field(8, ge=1, description="attention heads per decoder layer")
    ffn: Int = Field(1024, ge=1, description="feed-forward hidden size of a decoder layer")
    max_queries: Int = Field(300, ge=1, description="object queries per image: the top-scoring vision tokens")
    dropout: Float = Field(0.0, ge=0.0, lt=1.0, description="dropout in the head's decoder")
    prior_prob: Float = Field(0.01, gt=0.0, lt=1.0, description=(
        "initial objectness probability of every query (focal-loss prior)"))
    ref_cells: Float = Field(
        2.0,
        gt=0.0,
        description="side of a query's initial reference box in merged-grid cells (2: its token's "
        "cell plus half a cell on each side)",
    )
    caption_max_len: Int = Field(32, ge=1, description="longest caption, in caption tokens")
    caption_layers: Int = Field(2, ge=1, description="decoder layers of the caption decoder")
    token_boxes: Bool = Field(
        False,
        description="two-stage: every vision token predicts a box and each query starts from its "
        "token's box (the token stage then trains boxes, see loss.token_matches)",
    )
    stem_width: Int = Field(0, ge=0, description=(
        "channels of a conv stem over the student image whose features, sampled over each box, "
        "refine the head's boxes inside a 28-px cell (0: none; small objects need it)"))
    roi_grid: Int = Field(4, ge=1, description="with stem_width: samples per side of a box")
    text_layer: Int = Field(
        -1,
        description="which LLM hidden states of the prompt form the head's language memory: "
        "1..num_layers after that decoder layer, negative from the end, -1 the final output",
    )
    vision_source: Literal["merger", "llm"] = Field("merger", description=(
        "the head's vision memory: the merger's tokens (merger), or the LLM's hidden states at the "
        "student image's tokens, from the same layer as text_layer (llm: deeper, at no extra cost)"))
    captions: Bool = Field(
        True, description="build the caption decoder (trained with loss.caption_weight)"
    )

    def head_config(self, llm_hidden: int, caption_vocab_size: int = 0) -> HeadConfig:
        """The `HeadConfig` of this section; caption_vocab_size is forced to 0 without captions."""
        from bbucli.model.head import HeadConfig

        fields = self.model_dump(exclude={"text_layer", "captions", "vision_source"})
        vocab = caption_vocab_size if self.captions else 0
        return HeadConfig(llm_hidden=llm_hidden, caption_vocab_size=vocab, **fields)


class TrainSection(BaseModel):
    """TrainingArguments fields (checked against `dataclasses.fields(TrainingArguments)` by
    `train_argument_problems`) plus bbu's own `resume`. Fields owned by other sections
    (learning_rate, seed, deepspeed, ...) are refused here."""

    model_config = ConfigDict(extra="allow", frozen=True)

    output_dir: Path = Field(
        description="run folder: config.yaml, run.json, metrics.jsonl, checkpoint-N/, final/"
    )
    resume: Bool | Path = Field(
        False,
        description="true: continue from the latest checkpoint-N in output_dir; or a checkpoint "
        "folder; false: start afresh",
    )

    @model_validator(mode="before")
    @classmethod
    def _check_passthrough(cls, data: Any) -> Any:
        if isinstance(data, dict):
            problems = train_argument_problems(data, path="")
            if problems:
                raise ValueError("; ".join(str(p) for p in problems))
        return data

    @property
    def arguments(self) -> dict[str, Any]:
        """The pass-through TrainingArguments fields given (output_dir included, resume not)."""
        return {"output_dir": str(self.output_dir), **(self.model_extra or {})}


class BbuConfig(Section):
    """One training run. Build it with `load_config` (full validation); constructing it directly
    checks structure and types only (`validate_config` adds the cross-field and file checks)."""

    model: ModelSection = Field(
        ModelSection(), description="which Qwen2.5-VL, dtype, attention, pixel limits, seed"
    )
    data: DataSection = Field(
        description="the JSONL files, language, token budgets, packing, teachers, workers"
    )
    detection: DetectionSection = Field(
        DetectionSection(),
        description="the detection head's sizes, which LLM hidden layer feeds it, captions",
    )
    loss: LossSection = Field(
        LossSection(),
        description="the six multi-task loss weights, matcher costs, focal alpha/gamma",
    )
    optim: OptimSection = Field(
        OptimSection(),
        description="AdamW over five parameter groups (the schedule is train.lr_scheduler_type and "
        "train.warmup_steps)",
    )
    train: TrainSection = Field(
        description="`TrainingArguments` fields of transformers, passed through, plus bbu's resume"
    )
    deepspeed: Path | dict[str, Any] | None = Field(
        None, description="null, a path to a DeepSpeed JSON, or the same JSON inline"
    )

    def resolved_dict(self) -> dict[str, Any]:
        """Plain YAML-able dict: sections and fields in schema order, train's pass-through keys
        sorted after output_dir/resume, inline DeepSpeed keys sorted, paths as absolute strings."""
        out = self.model_dump(mode="json", exclude={"train", "deepspeed"})
        train = self.train.model_dump(mode="json")
        declared = {k: train.pop(k) for k in TrainSection.model_fields}
        out["train"] = {**declared, **dict(sorted(train.items()))}
        ds = self.deepspeed
        out["deepspeed"] = str(ds) if isinstance(ds, Path) else _sorted(ds)
        return out

    def to_yaml(self) -> str:
        """`resolved_dict()` as YAML; `load_config` of this text gives an equal config."""
        return dump_yaml(self.resolved_dict())

    def autocast(self, gpu: bool) -> Literal["bf16", "fp16"] | None:
        """The half dtype the forward autocasts to while the weights stay fp32, or None when
        the weights load as model.dtype says. A half model.dtype (resolved for `gpu`, see
        `effective_dtype`) without DeepSpeed means this: DeepSpeed keeps fp32 master weights of
        half weights itself, but torch AdamW would update half weights in place, where an update
        at a fine-tuning rate (1e-5) falls below half precision's resolution for most weights.
        Training then matches the Trainer's `bf16: true` on an fp32 model."""
        dtype = effective_dtype(self.model, gpu)
        if self.deepspeed is None and dtype in ("bf16", "fp16"):
            return dtype
        return None

    def training_arguments(self) -> dict[str, Any]:
        """Keyword arguments for `transformers.TrainingArguments`: train's pass-through fields
        plus those other sections own (seed, optimizer hyper-parameters, workers, DeepSpeed,
        batch size: 1 packed row per device when packing). Not constructed here: that can need
        accelerate/distributed state."""
        lrs = self.optim.lrs
        kwargs = dict(self.train.arguments)
        kwargs.update(
            seed=self.model.seed,
            learning_rate=max(getattr(lrs, g) for g in GROUPS),
            weight_decay=self.optim.weight_decay,
            adam_beta1=self.optim.betas[0],
            adam_beta2=self.optim.betas[1],
            adam_epsilon=self.optim.eps,
            dataloader_num_workers=self.data.num_workers,
        )
        kwargs.setdefault(
            "per_device_train_batch_size", 1 if self.data.packing else self.data.batch_size
        )
        if self.deepspeed is not None:
            kwargs["deepspeed"] = (
                str(self.deepspeed) if isinstance(self.deepspeed, Path) else dict(self.deepspeed)
            )
        return kwargs


# Section name -> its model, in schema order (the deepspeed field is a value, not a section).
SECTIONS: dict[str, type[BaseModel]] = {
    name: field.annotation for name, field in BbuConfig.model_fields.items() if name != "deepspeed"
}
# Where a value is a filesystem path (relative ones resolve against the YAML's folder).
PATH_KEYS: tuple[tuple[str, ...], ...] = tuple(
    tuple(key.split("."))
    for key in (
        "model.path", "data.train", "data.val", "data.teachers", "data.image_root",
        "data.taxonomy", "train.output_dir", "train.resume", "deepspeed",
    )
)

def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value
