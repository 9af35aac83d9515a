"""`bbu demo` as a library: the whole loop on the embedded default, in one folder.

`run_demo(out_dir, ...)` generates a synthetic raw set into out_dir/raw (or takes `examples/raw` of a
clone, from its root folder), converts it into out_dir/data/bbu.jsonl, inspects it, trains the tiny
config shipped in the package (`bbucli/resources/configs/tiny.yaml`, the same file as the clone's
`configs/tiny.yaml`) with the demo's settings (`DEMO_OVERRIDES`, then the caller's overrides) into
out_dir/run, evaluates the final checkpoint on the val split into out_dir/eval (the detection head
on every image, the generated answers on the first `lm_images`), writes out_dir/demo.json and
returns a `DemoResult`.
Progress goes through an optional callback as `DemoProgress` events; the library prints nothing.
Everything the demo reads ships inside the package, so `bbu demo` runs from an installed wheel in
any folder.

The default length is a fixed step count (`DEFAULT_STEPS`, `DEFAULT_TEACHER_STEPS` with teachers),
so the default demo is the same run on every machine: same seed, same data, same steps, same
numbers (up to floating-point reduction order across CPU kinds). A time budget (`minutes`) is
turned into steps instead: one batch is timed through the training dry run, and the steps that fit
in the budget's training share are planned from it. The step count is sized for the slower of the
2-core CPUs it was tried on (AMD EPYC; an Intel Xeon ran the same steps 1.35x faster): 800 steps
took 7 min 4 s in all there and reached AP50 0.743. The LM loss scores 64 answer tokens per step
(`loss.lm_max_tokens`): the tiny model's 151k-word output layer over 256 of them was half of a
step (60 steps: 58 s of training at 256, 29 s at 64), so the same minutes now buy 800 steps
instead of 500 (0.588 AP50 at 500 steps and 256 tokens, 6 min 59 s, the same day and machine).

`teachers` K > 0 is the few-shot demo: `bbu convert` writes K label-blind teachers per student
(`bbucli.teachers`), training shows each student K teachers drawn again from the pool every epoch
(`TEACHER_OVERRIDES`), and the evaluation prompts every val image with the K teachers the
checkpoint carries, as `bbu predict` does. A teacher doubles the tokens of a step: the
`DEFAULT_TEACHER_STEPS` few-shot steps took 6 min 14 s in all with K=1 (AP50 0.677), a little less
than the default demo.

The demo's defaults were tuned on a 2-core CPU (benchmarks/learning.py draws the curve): 224x308
images (88 vision tokens), padded batches of 8 students grouped by length, no teachers in the
prompt by default (each lengthens every step), a system prompt without the class list (~60 tokens instead
of ~430), two-stage token boxes starting 0.6 cells wide (most objects are 12-20 px), at most 64
answer tokens in the LM loss per step (the 151k-vocabulary output layer costs about 1.2 ms per
token on 2 cores; earlier, at 500 steps, 128 tokens often left the answers' JSON list unclosed,
and the generated answers of both the 256-token 500-step run and this one parsed 0 of 8: the
detection head is what the demo trains in its minutes), 4 decoder layers, a pixel stem read at every query's box (`detection.stem_width`: without
it the boxes of 15-25 px objects could not be placed inside a 28 px token cell, and AP50 stayed
near 0.2), matching with a spatial prior (`loss.cost_center`), learning rates of
1e-3 (5e-4 for the vision tower; 2e-3 learnt slower), and a synthetic set of closer photos
(`DEMO_ZOOM`: screws ~21 px instead of ~12 px at 224x308) with defects drawn often enough
(`DEMO_DEFECT_RATE`) that every class has val instances to score. The head is evaluated with
`DEMO_HYPOTHESES` classes per query (DETR's top-100 over query x class pairs).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from bbucli.convert.pipeline import ConvertOptions, convert_dataset, output_paths
from bbucli.demo.synthetic import generate_raw_set
from bbucli.errors import UsageError

if TYPE_CHECKING:
    from bbucli.convert.report import ConvertReport
    from bbucli.infer.checkpoint_eval import CheckpointEvalRun, SourceEval
    from bbucli.inspection.summary import DatasetSummary
    from bbucli.train.callbacks import TrainProgress
    from bbucli.train.run import TrainResult

DEFAULT_STEPS = 800
DEFAULT_TEACHER_STEPS = 500
DEMO_IMAGES = 300
DEMO_IMAGE_SIZE = (448, 616)  # generated photos; converted down to 224x308
DEMO_MAX_PIXELS = 8 * 11 * 28 * 28  # 224x308: an 8x11 merged grid, 88 vision tokens
DEMO_DEFECT_RATE = 0.3
DEMO_ZOOM = 1.75  # closer photos: objects 1.75x bigger (generate_raw_set)
DEMO_LM_IMAGES = 8  # val images whose answers are generated (about 3-5 s each on 2 CPU cores)
DEMO_MAX_NEW_TOKENS = 1024
#: Head classes per query in the demo's evaluation: DETR's top-100 over (query, class) pairs.
DEMO_HYPOTHESES = 3
#: What the demo changes in the tiny config; the caller's overrides come after and win.
DEMO_OVERRIDES = (
    "data.num_teachers=0", "data.packing=false", "data.batch_size=8", "data.group_by_length=true",
    "data.prompt_classes=false", "detection.token_boxes=true", "detection.ref_cells=0.6",
    "detection.layers=4", "detection.stem_width=32", "loss.token_matches=1",
    "loss.lm_max_tokens=64", "loss.cost_center=100",
    "optim.lrs.vision=5e-4", "optim.lrs.merger=1e-3", "optim.lrs.llm=1e-3",
    "optim.lrs.detection=1e-3", "optim.lrs.adapter=1e-3",
    "train.optim=adamw_torch_fused", "train.num_train_epochs=1000", "train.logging_steps=10",
    "train.eval_strategy=no", "train.save_strategy=no", "train.load_best_model_at_end=false",
)
#: What the few-shot demo (`teachers` K > 0) adds after DEMO_OVERRIDES and `data.num_teachers=K`:
#: each student's K label-blind teachers are drawn again from the pool every epoch. Padded batches
#: stay: grouped by length they carry under 1% padding, so packed rows have nothing to win.
TEACHER_OVERRIDES = ("data.teacher_resample=true",)
# Share of a time budget spent in optimizer steps; the rest goes to building the model, the dry
# run timing one batch, the optimizer update the dry run leaves out, saving and evaluating.
TRAIN_SHARE = 0.7
STAGES = ("generate", "convert", "inspect", "time", "train", "eval", "answers")


@dataclass(frozen=True)
class DemoProgress:
    """One progress event. stage: one of STAGES; detail: the sub-stage of convert ("read",
    "check", "resize") or eval ("load", "predict", "head: ..."), else ""; done / total: units of
    that stage (total 0: unknown); train: the Trainer's event during "train"."""

    stage: str
    done: int
    total: int
    detail: str = ""
    train: TrainProgress | None = None


@dataclass(frozen=True)
class DemoResult:
    """What the demo did and where it left everything.

    raw_dir: the raw export converted (examples/raw, or out_dir/raw when generated); data: the
    train JSONL (val, teachers, report and images/ beside it); run_dir: train.output_dir;
    checkpoint: the final checkpoint evaluated; eval_dir: metrics.json, per-class CSV, PNGs;
    max_steps: the steps trained (planned from `minutes` when `planned_from_s` is set: the
    seconds of one timed batch); ap50 / ap: COCO AP at IoU 0.5 and 0.5:0.95 of the head on the
    val split (None: undefined, e.g. no ground-truth boxes); lm_images / lm_parsed / lm_ap50: the
    val images whose answers were generated, how many parsed as a complete grounding answer, and
    their AP50 (None without answers); first_loss / last_loss: the first
    and last logged training loss; look_next: (what, path) of the artefacts worth opening next.
    """

    out_dir: Path
    raw_dir: Path
    generated: bool
    data: Path
    run_dir: Path
    checkpoint: Path
    eval_dir: Path
    max_steps: int
    planned_from_s: float | None
    teachers: int
    ap50: float | None
    ap: float | None
    lm_images: int
    lm_parsed: int
    lm_ap50: float | None
    first_loss: float | None
    last_loss: float | None
    seconds: float
    convert: ConvertReport
    summary: DatasetSummary
    train: TrainResult
    eval: CheckpointEvalRun
    look_next: tuple[tuple[str, Path], ...]

    def to_dict(self) -> dict[str, object]:
        """The numbers and paths (JSON-ready), without the stage reports."""
        return {
            "out_dir": str(self.out_dir), "raw_dir": str(self.raw_dir), "generated": self.generated,
            "data": str(self.data), "run_dir": str(self.run_dir), "checkpoint": str(self.checkpoint),
            "eval_dir": str(self.eval_dir), "max_steps": self.max_steps,
            "planned_from_s": self.planned_from_s, "teachers": self.teachers, "AP50": self.ap50, "AP": self.ap,
            "lm_images": self.lm_images, "lm_parsed": self.lm_parsed, "lm_AP50": self.lm_ap50,
            "first_loss": self.first_loss, "last_loss": self.last_loss, "seconds": round(self.seconds, 1),
            "look_next": {what: str(path) for what, path in self.look_next},
        }


def find_examples(root: Path | None = None) -> Path | None:
    """examples/raw under `root` (default: the working directory, a clone's root folder), None when
    absent or empty (an installed wheel ships no photos: the demo generates its own)."""
    raw = (Path.cwd() if root is None else root) / "examples" / "raw"
    return raw if raw.is_dir() and any(raw.glob("*.json")) else None


def tiny_config() -> Path:
    """The tiny training config shipped in the package (`bbucli/resources/configs/tiny.yaml`).

    Its relative data and output paths are never used by the demo, which overrides them all."""
    return Path(str(resources.files("bbucli") / "resources" / "configs" / "tiny.yaml"))


def steps_for_budget(minutes: float, seconds_per_step: float, share: float = TRAIN_SHARE) -> int:
    """Optimizer steps that fit in `share` of `minutes` at `seconds_per_step` (at least 1)."""
    return max(1, math.floor(minutes * 60 * share / max(seconds_per_step, 1e-6)))


def run_demo(
    out_dir: str | Path,
    *,
    minutes: float | None = None,
    max_steps: int | None = None,
    use_examples: bool = False,
    n_images: int = DEMO_IMAGES,
    seed: int = 0,
    image_size: tuple[int, int] | None = DEMO_IMAGE_SIZE,
    defect_rate: float | None = DEMO_DEFECT_RATE,
    zoom: float = DEMO_ZOOM,
    max_pixels: int = DEMO_MAX_PIXELS,
    val_ratio: float = 0.2,
    lm_images: int = DEMO_LM_IMAGES,
    lm_max_new_tokens: int = DEMO_MAX_NEW_TOKENS,
    teachers: int = 0,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: Callable[[DemoProgress], None] | None = None,
) -> DemoResult:
    """Generate or take the raw set, convert, inspect, train and evaluate (module doc).

    minutes / max_steps: the training length, one or the other (neither: DEFAULT_STEPS steps,
    DEFAULT_TEACHER_STEPS with teachers); teachers: K per student (0: none; module doc);
    use_examples: convert examples/raw of the working directory when it has one (a clone's root:
    16 photos, the loop runs but they are too few to learn from; else a set is generated);
    n_images / image_size (w, h) / seed: the generated set (seed also seeds the split and the
    model); max_pixels: the smart_resize bound of convert and the model (model.max_pixels);
    config: the training YAML (default: the packaged tiny config, `tiny_config()`); overrides: `key=value`s applied after
    the demo's own (DEMO_OVERRIDES, TEACHER_OVERRIDES, data paths, output_dir, max_steps, seed),
    so they win.
    defect_rate: in [0, 1], the generated set's probability of the defect state per part (None:
    each part's own rate); zoom: closer generated photos (generate_raw_set); lm_images: val images whose answers are generated and parsed (0: none),
    at most lm_max_new_tokens tokens each.
    Raises UsageError for impossible arguments or a non-empty out_dir, and what the stages raise.
    """
    started = time.perf_counter()
    report = progress or (lambda event: None)
    out_dir = Path(out_dir).expanduser().absolute()
    _check_arguments(out_dir, minutes, max_steps, n_images, lm_images, teachers)
    config_path = Path(config) if config is not None else tiny_config()

    raw_dir, generated = find_examples() if use_examples else None, False
    if raw_dir is None:
        raw_dir, generated = out_dir / "raw", True
        size = {"size": image_size} if image_size is not None else {}
        generate_raw_set(
            raw_dir, n_images, seed=seed, **size, defect_rate=defect_rate, zoom=zoom,
            progress=lambda done, total: report(DemoProgress("generate", done, total)),
        )

    data = out_dir / "data" / "bbu.jsonl"
    options = ConvertOptions(seed=seed, max_pixels=max_pixels, val_ratio=val_ratio, teachers=max(teachers, 1))
    converted = convert_dataset(
        raw_dir, data, options,
        progress=lambda stage, done, total: report(DemoProgress("convert", done, total, stage)),
    )
    paths = output_paths(data)

    from bbucli.inspection.source import InspectOptions
    from bbucli.inspection.summary import summarize
    from bbucli.train.config.loading import load_config

    run_dir = out_dir / "run"
    ours = [
        *DEMO_OVERRIDES, *((f"data.num_teachers={teachers}", *TEACHER_OVERRIDES) if teachers else ()),
        f"data.train={paths['train']}", f"data.val={paths['val']}", f"data.teachers={paths['teachers']}",
        f"train.output_dir={run_dir}", f"model.max_pixels={max_pixels}", f"model.seed={seed}",
    ]
    cfg = load_config(config_path, [*ours, *overrides])
    report(DemoProgress("inspect", 0, 0))
    inspect_options = InspectOptions(
        model="tiny" if cfg.model.path == "tiny" else str(cfg.model.path), lang=cfg.data.lang,
        max_tokens=cfg.data.max_tokens, batch_tokens=cfg.data.max_tokens_per_batch,
        batch_size=cfg.data.batch_size, prompt_classes=cfg.data.prompt_classes,
    )
    summary = summarize(
        paths["train"], inspect_options,
        progress=lambda stage, done, total: report(DemoProgress("inspect", done, total)),
    )

    from bbucli.train.run import run_training

    planned_from = None
    if max_steps is None and minutes is None:
        max_steps = DEFAULT_TEACHER_STEPS if teachers else DEFAULT_STEPS
    elif max_steps is None:
        report(DemoProgress("time", 0, 1))
        planned_from = run_training(cfg, dry_run=True).dry_run.seconds
        max_steps = steps_for_budget(minutes, planned_from)
        report(DemoProgress("time", 1, 1))
    cfg = load_config(config_path, [*ours, f"train.max_steps={max_steps}", *overrides])
    trained = run_training(
        cfg, progress=lambda event: report(DemoProgress("train", event.step, event.max_steps, event.kind, event))
    )
    if trained.final_checkpoint is None:
        raise UsageError(f"training into {run_dir} left no final checkpoint", hint="see the training log above")

    from bbucli.infer.checkpoint_eval import evaluate_checkpoint

    eval_dir = out_dir / "eval"
    evaluated = evaluate_checkpoint(
        trained.final_checkpoint, paths["val"], eval_dir, sources=("head",), hypotheses=DEMO_HYPOTHESES,
        progress=lambda stage, done, total: report(DemoProgress("eval", done, total, stage)),
    )
    head = evaluated.sources[0]
    coco = head.result.coco
    lm = None
    if lm_images:
        subset = paths["val"].with_name(f"bbu.val.first{lm_images}.jsonl")
        lines = [line for line in paths["val"].read_text(encoding="utf-8").splitlines() if line.strip()]
        subset.write_text("".join(f"{line}\n" for line in lines[:lm_images]), encoding="utf-8")
        lm = evaluate_checkpoint(
            trained.final_checkpoint, subset, eval_dir / "lm", sources=("lm",),
            max_new_tokens=lm_max_new_tokens, batch_size=lm_images,
            progress=lambda stage, done, total: report(DemoProgress("answers", done, total, stage)),
        ).sources[0]
    lm_counts = lm.result.counts if lm is not None else {}
    losses = trained.losses
    result = DemoResult(
        out_dir=out_dir, raw_dir=raw_dir, generated=generated, data=paths["train"], run_dir=run_dir,
        checkpoint=trained.final_checkpoint, eval_dir=eval_dir, max_steps=max_steps,
        planned_from_s=planned_from, teachers=teachers, ap50=coco.get("AP50"), ap=coco.get("AP"),
        lm_images=int(lm_counts.get("images", 0)),
        lm_parsed=int(lm_counts.get("images", 0)) - int(lm_counts.get("unparseable", 0)),
        lm_ap50=lm.result.coco.get("AP50") if lm is not None else None,
        first_loss=losses[0][1] if losses else None, last_loss=losses[-1][1] if losses else None,
        seconds=time.perf_counter() - started, convert=converted, summary=summary, train=trained,
        eval=evaluated, look_next=_look_next(paths, run_dir, trained.final_checkpoint, head.written, lm),
    )
    (out_dir / "demo.json").write_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return result


def _check_arguments(
    out_dir: Path, minutes: float | None, max_steps: int | None, n_images: int, lm_images: int, teachers: int
) -> None:
    problems = []
    if teachers < 0:
        problems.append(f"--teachers must be >= 0, got {teachers}")
    if lm_images < 0:
        problems.append(f"lm_images must be >= 0, got {lm_images}")
    if minutes is not None and max_steps is not None:
        problems.append("give a time budget (--minutes) or a step count (--steps), not both")
    if minutes is not None and minutes <= 0:
        problems.append(f"--minutes must be > 0, got {minutes}")
    if max_steps is not None and max_steps < 1:
        problems.append(f"--steps must be >= 1, got {max_steps}")
    if n_images < 2:
        problems.append(f"the generated set needs at least 2 images, got {n_images}")
    if problems:
        raise UsageError("; ".join(problems))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(
            f"{out_dir} is not empty; the demo writes a fresh folder",
            hint="pass --out NEW_DIR, or delete the previous demo's folder",
        )


def _look_next(
    paths: dict[str, Path], run_dir: Path, checkpoint: Path, written: Mapping[str, Path], lm: SourceEval | None = None
) -> tuple[tuple[str, Path], ...]:
    """(what, path) of the artefacts a new user opens next, those that exist, in pipeline order."""
    evaluated = dict(written)
    wanted = [
        ("training data (inspect it: bbu inspect FILE --index 0 --tokens)", paths["train"]),
        ("resized images", paths["images"]),
        ("convert report", paths["report"]),
        ("resolved training config", run_dir / "config.yaml"),
        ("training log, one line per log and eval", run_dir / "metrics.jsonl"),
        ("final checkpoint (bbu eval / bbu predict take it)", checkpoint),
        ("metrics", evaluated.get("metrics")),
        ("per-class AP", evaluated.get("per_class")),
        ("precision-recall curves", evaluated.get("pr_curve")),
        ("worst images, ground truth vs predictions", evaluated["metrics"].parent / "overlays" if "metrics" in evaluated else None),
        ("predictions", evaluated.get("predictions")),
        ("generated answers, raw text and parsed boxes", lm.written.get("predictions") if lm is not None else None),
    ]
    return tuple((what, Path(path)) for what, path in wanted if path is not None and Path(path).exists())
