"""What a run optimises and how: the `loss` section (multi-task weights, matcher costs, focal
loss) and the `optim` section (a learning rate per parameter group, AdamW's hyper-parameters)."""

from __future__ import annotations

from pydantic import Field

from bbucli.loss.costs import DEFAULT_COSTS
from bbucli.loss.weights import DEFAULT_WEIGHTS
from bbucli.train.config.fields import Bool, Float, Int, Section

#: The parameter groups, each with its own learning rate (`bbucli.model.param_groups` assigns
#: parameters to them; that module needs torch, this one must not).
GROUPS = ("vision", "merger", "llm", "detection", "adapter")


class LossSection(Section):
    """total = teacher_weight*teacher_lm + student_weight*student_lm + bbox_l1_weight*l1
    + bbox_giou_weight*giou + objectness_weight*obj + caption_weight*caption, with the Hungarian
    matcher's costs and the objectness focal loss. Names and defaults come from
    `bbucli.loss.weights.LossWeights` and `bbucli.loss.costs.MatchCosts`."""

    teacher_weight: Float = Field(
        DEFAULT_WEIGHTS.teacher_weight,
        ge=0.0,
        description="weight of the LM loss on the teachers' answers",
    )
    student_weight: Float = Field(
        DEFAULT_WEIGHTS.student_weight,
        ge=0.0,
        description="weight of the LM loss on the student's answer",
    )
    bbox_l1_weight: Float = Field(
        DEFAULT_WEIGHTS.bbox_l1_weight,
        ge=0.0,
        description="weight of the L1 box loss of matched queries",
    )
    bbox_giou_weight: Float = Field(
        DEFAULT_WEIGHTS.bbox_giou_weight,
        ge=0.0,
        description="weight of the GIoU loss of matched queries",
    )
    objectness_weight: Float = Field(
        DEFAULT_WEIGHTS.objectness_weight,
        ge=0.0,
        description="weight of the objectness focal loss",
    )
    caption_weight: Float = Field(
        DEFAULT_WEIGHTS.caption_weight,
        ge=0.0,
        description="weight of the caption loss (only with detection.captions)",
    )
    cost_obj: Float = Field(
        DEFAULT_COSTS.cost_obj, ge=0.0, description="Hungarian matching cost of objectness"
    )
    cost_bbox: Float = Field(
        DEFAULT_COSTS.cost_bbox,
        ge=0.0,
        description="Hungarian matching cost of the L1 box distance",
    )
    cost_giou: Float = Field(
        DEFAULT_COSTS.cost_giou, ge=0.0, description="Hungarian matching cost of the GIoU"
    )
    cost_center: Float = Field(
        DEFAULT_COSTS.cost_center,
        ge=0.0,
        description=(
            "Hungarian matching cost of a query whose token cell is outside the target box grown by half "
            "a cell (a spatial prior: objects match the queries around them; 0: off, 100: a hard rule)"
        ),
    )
    focal_alpha: Float = Field(
        DEFAULT_COSTS.focal_alpha, description="objectness focal loss alpha (weight of positives)"
    )
    focal_gamma: Float = Field(
        DEFAULT_COSTS.focal_gamma,
        ge=0.0,
        description="objectness focal loss gamma (focusing exponent)",
    )
    aux: Bool = Field(
        True, description="detection losses on every decoder layer, not just the last"
    )
    token_aux: Bool = Field(
        True,
        description="objectness loss on the vision tokens' scores (what picks the top-K queries)",
    )
    token_matches: Int = Field(
        1,
        ge=1,
        description="with detection.token_boxes: tokens matched to every target in the token "
        "stage's box loss (one-to-many: more box supervision per image)",
    )
    lm_max_tokens: Int | None = Field(
        None,
        ge=1,
        description="answer tokens scored by the LM loss per training step, a random subset drawn "
        "afresh each step, per answer segment so that the teacher and student means stay unbiased "
        "(null: all; evaluation always scores all, so eval_loss is exact); for small models on CPU "
        "where the 151k-vocabulary lm_head dominates a step",
    )


class LearningRates(Section):
    """Peak learning rate of each parameter group; 0 freezes the group."""

    vision: Float = Field(0.0, ge=0.0, description="the vision encoder (ViT)")
    merger: Float = Field(
        1e-5, ge=0.0, description="the patch merger projecting vision tokens into the LLM"
    )
    llm: Float = Field(1e-5, ge=0.0, description="the language model, lm_head included")
    detection: Float = Field(
        1e-4, ge=0.0, description="the detection head (random initial weights)"
    )
    adapter: Float = Field(
        1e-4, ge=0.0, description="the head's vision and language adapters from the LLM hidden size"
    )


class OptimSection(Section):
    """AdamW over the five parameter groups (the schedule is train.lr_scheduler_type/warmup_steps)."""

    lrs: LearningRates = Field(
        LearningRates(), description="peak learning rate per parameter group; 0 freezes a group"
    )
    weight_decay: Float = Field(0.0, ge=0.0, description="AdamW weight decay")
    betas: tuple[Float, Float] = Field(
        (0.9, 0.999), description="AdamW (beta1, beta2), each in [0, 1)"
    )
    eps: Float = Field(1e-8, gt=0.0, description="AdamW epsilon")
