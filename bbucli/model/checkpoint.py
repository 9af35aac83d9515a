"""The trained-checkpoint folder: `save_checkpoint`, `load_checkpoint`, `is_checkpoint`.

    ckpt/
      qwen/               Qwen2.5-VL via `save_pretrained` (config.json, model.safetensors,
                          generation_config.json): loads in plain transformers
      adapter_config.json, adapter_model.safetensors
                          instead of qwen/ for a LoRA run: the adapter in peft's own format
                          (`bbucli.model.lora`); the base model is bbu.json's `lora.base`
                          (the run's model.path), loaded as training loaded it
      merger.safetensors  a LoRA run's patch merger, when it trained (names relative to it)
      processor/          tokenizer, preprocessor_config.json (pixel limits), chat_template.json
      head.safetensors    the detection head's state dict (names relative to `DetectionHead`)
      bbu.json            format, versions, head config, text_layer, caption vocabulary, prompts,
                          trained_with (`TrainedWith`: the training config's facts inference needs,
                          and the classes of the training data),
                          extra
      config.yaml         the resolved training config (when given)
      taxonomy.yaml       the taxonomy the data was converted with (when given)
      teachers/           the inference teachers (when given): teachers.jsonl, one bbu episode
                          per teacher (the teacher as its student), image paths relative to
                          teachers/, and the images it names (copied as training read them)

Saving is atomic at the folder level: everything is written into a hidden temporary sibling
(`.ckpt.tmp-*`, `bbu.json` last), which is then renamed into place. An existing checkpoint is
swapped out (renamed to `.ckpt.old-*`, removed once the new one is in place), so readers see the
old folder or the new one, never a mix. Entries of an existing folder that are not checkpoint
files (a Trainer's optimizer.pt, trainer_state.json, ...) are hard-linked (copied where links are
impossible) into the new folder before the swap, so replacing never loses them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbucli.errors import ModelError
from bbucli.folders import link_missing
from bbucli.model.checkpoint_io import quiet_transformers, save_state
from bbucli.model.checkpoint_layout import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    HEAD_FILE,
    MERGER_FILE,
    META_FILE,
    OWNED,
    PROCESSOR_DIR,
    QWEN_DIR,
    RETRAIN_HINT,
    TAXONOMY_FILE,
    TEACHERS_DIR,
    check_folder,
    check_head_state,
    missing_files,
    parse_config,
    read_meta,
)
from bbucli.model.checkpoint_lora import load_lora, save_lora
from bbucli.model.checkpoint_teachers import TEACHERS_FILE, checkpoint_teachers, save_teachers
from bbucli.model.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraRecord
from bbucli.model.trained_with import TrainedWith
from bbucli.schema import Sample

if TYPE_CHECKING:
    import torch

    from bbucli.chat.loading import VLProcessor
    from bbucli.chat.prompts import Prompts
    from bbucli.model.bbu_model import BBUModel


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded checkpoint. model: `BBUModel` in eval mode (head in fp32, Qwen in the dtype asked
    for); processor: its `VLProcessor`; config_yaml / taxonomy_yaml: the saved texts or None;
    meta: the decoded bbu.json; path: the folder. config: config.yaml as a mapping ({} without
    one); trained_with: bbu.json's typed record, or for a checkpoint written before it, the one
    read from config.yaml's `data` section."""

    model: BBUModel
    processor: VLProcessor
    config_yaml: str | None
    taxonomy_yaml: str | None
    meta: Mapping[str, Any]
    path: Path
    config: Mapping[str, Any] = field(init=False, repr=False)
    trained_with: TrainedWith = field(init=False, repr=False)

    def __post_init__(self) -> None:
        config = parse_config(self.config_yaml, self.path)
        saved = self.meta.get("trained_with")
        record = saved if isinstance(saved, Mapping) else config.get("data")
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "trained_with", TrainedWith.from_mapping(record))

    @property
    def extra(self) -> Mapping[str, Any]:
        return self.meta.get("extra") or {}

    @property
    def teachers(self) -> tuple[Sample, ...] | None:
        """The teachers inference prepends (`checkpoint_teachers`); None: written without any."""
        return checkpoint_teachers(self.path)

    @property
    def max_tokens(self) -> int | None:
        """The training token budget per episode (config `data.max_tokens`), None without one."""
        return self.trained_with.max_tokens

    def prompts(self) -> Prompts:
        """The system prompt and instruction the model was trained with.

        bbu.json `prompts` when the trainer saved them (exact); otherwise rebuilt like training
        builds them: `class_descs()` in the config's `data.lang`; what the config does not state
        takes `build_prompts`'s default."""
        from bbucli.chat.prompts import Prompts, build_prompts

        saved = self.meta.get("prompts")
        if isinstance(saved, Mapping):
            return Prompts(system=str(saved["system"]), instruction=str(saved["instruction"]))
        facts = self.trained_with
        stated: dict[str, Any] = {}
        if facts.lang is not None:
            stated["lang"] = facts.lang
        if facts.prompt_classes is not None:
            stated["list_classes"] = facts.prompt_classes
        return build_prompts(self.class_descs(), **stated)

    def class_descs(self) -> list[str]:
        """The class descs the model was trained on: `trained_with.classes`, the descs of its
        training data. A checkpoint written before bbu kept them gives every desc of its
        taxonomy.yaml (else the config's `data.taxonomy`, else the built-in taxonomy) in the
        config's `data.lang`."""
        from bbucli.taxonomy import Taxonomy

        facts = self.trained_with
        if facts.classes is not None:
            return list(facts.classes)
        taxonomy_file: Path | None = self.path / TAXONOMY_FILE
        if not taxonomy_file.is_file():
            configured = facts.taxonomy
            taxonomy_file = configured if configured is not None and configured.is_file() else None
        taxonomy = Taxonomy.load(taxonomy_file)
        return list(taxonomy.descs(facts.lang) if facts.lang is not None else taxonomy.descs())


def is_checkpoint(path: str | Path) -> bool:
    """True when `path` is a folder holding every file of a complete checkpoint (see the module doc)."""
    folder = Path(path)
    return folder.is_dir() and not missing_files(folder)


def save_checkpoint(
    out_dir: str | Path,
    model: BBUModel,
    processor: VLProcessor,
    *,
    config_yaml: str | None = None,
    taxonomy_yaml: str | None = None,
    extra: Mapping[str, Any] | None = None,
    prompts: Prompts | None = None,
    trained_with: TrainedWith | None = None,
    teachers: Sequence[Sample] | None = None,
    lora: LoraRecord | None = None,
) -> Path:
    """Write `model` and `processor` as a checkpoint folder at `out_dir` (atomically, see the module
    doc) and return its path. extra: JSON-serialisable values kept in bbu.json (step, metrics, ...);
    prompts: the system prompt and instruction of training, so inference needs no rebuild;
    trained_with: the training config's facts inference reads back (`Checkpoint.trained_with`);
    teachers: the teachers inference prepends (`bbucli.teachers.inference_teachers`), image paths
    absolute or relative to the working directory; their images are copied into teachers/ (an
    empty sequence writes an empty teachers.jsonl: trained without teachers).
    lora: the LoRA adapter injected into `model.qwen` (`bbucli.model.lora.apply_lora`) and its
    base; the adapter (and the merger, when it trained) is written instead of qwen/.
    Raises ModelError when `extra` is not JSON-serialisable, a teacher image is missing or the
    folder cannot be written."""
    from bbucli import __version__

    out = Path(out_dir)
    vocab = model.caption_vocab
    saved_prompts = None
    if prompts is not None:
        saved_prompts = {"system": prompts.system, "instruction": prompts.instruction}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bbucli_version": __version__,
        "head_config": asdict(model.head.config),
        "text_layer": int(model.text_layer),
        "vision_source": model.vision_source,
        "caption_vocab": vocab.to_dict() if vocab is not None else None,
        "prompts": saved_prompts,
        "trained_with": None if trained_with is None else trained_with.to_dict(),
        "qwen_dtype": str(next(model.qwen.parameters()).dtype).removeprefix("torch."),
        "files": {
            "qwen": QWEN_DIR if lora is None else None,
            "processor": PROCESSOR_DIR,
            "head": HEAD_FILE,
            "config": CONFIG_FILE if config_yaml is not None else None,
            "taxonomy": TAXONOMY_FILE if taxonomy_yaml is not None else None,
            "teachers": TEACHERS_FILE if teachers is not None else None,
        },
        "extra": dict(extra or {}),
    }
    if lora is not None:
        meta["lora"] = lora.to_dict()
        meta["files"]["adapter"] = [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
        meta["files"]["merger"] = MERGER_FILE if lora.merger_trained else None
    try:
        meta_text = json.dumps(meta, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"checkpoint metadata is not JSON-serialisable: {exc}",
            hint="pass plain numbers, strings, lists and dicts in `extra`",
        ) from exc
    missing = [s.image for s in teachers or () if not Path(s.image).is_file()]
    if missing:
        raise ModelError(
            f"teacher image {missing[0]} does not exist: the checkpoint cannot carry it",
            hint="keep the teacher pool's images where `bbu convert` wrote them (data.image_root)",
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()
        if lora is None:
            with quiet_transformers():
                model.qwen.save_pretrained(tmp / QWEN_DIR)
        else:
            save_lora(model, lora, tmp)
        processor.save_pretrained(tmp / PROCESSOR_DIR)
        save_state(model.head, tmp / HEAD_FILE)
        if config_yaml is not None:
            _write_text(tmp / CONFIG_FILE, config_yaml)
        if taxonomy_yaml is not None:
            _write_text(tmp / TAXONOMY_FILE, taxonomy_yaml)
        if teachers is not None:
            save_teachers(teachers, tmp / TEACHERS_DIR)
        _write_text(tmp / META_FILE, meta_text)  # last: its presence marks a complete folder
        _swap_in(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(
            f"cannot write checkpoint {out}: {exc}", hint="check free disk space and permissions"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
) -> Checkpoint:
    """Load a checkpoint folder written by `save_checkpoint`.

    dtype / attn_implementation: of the Qwen part, as in `load_model` (default bf16 on a CUDA
    machine, else fp32; flash-attention-2 when available for half dtypes, else sdpa); the head
    is kept in fp32 (it casts its inputs). device: where the model goes (default: CPU).
    Raises ModelError naming what is missing or damaged.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from bbucli.chat.loading import load_processor
    from bbucli.model.bbu_model import BBUModel
    from bbucli.model.caption_vocab import CaptionVocab
    from bbucli.model.head import HeadConfig
    from bbucli.model.loading import load_model

    folder = Path(path)
    check_folder(folder)
    meta = read_meta(folder)
    hint = f"the checkpoint in {folder} is damaged or from another bbu version; {RETRAIN_HINT}"
    try:
        head_config = HeadConfig(**meta["head_config"])
        text_layer = int(meta["text_layer"])
        vision_source = str(meta.get("vision_source", "merger"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder / META_FILE}: bad head config: {exc}", hint=hint) from exc
    vocab_dict = meta.get("caption_vocab")
    vocab = CaptionVocab.from_dict(vocab_dict) if vocab_dict is not None else None

    try:
        state = load_file(str(folder / HEAD_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {folder / HEAD_FILE}: {exc}", hint=hint) from exc
    check_head_state(state, head_config, folder / HEAD_FILE, hint)
    if meta.get("lora") is not None:
        qwen = load_lora(folder, meta["lora"], dtype, attn_implementation, hint)
    else:
        with quiet_transformers():
            try:
                qwen = load_model(
                    folder / QWEN_DIR, dtype=dtype, attn_implementation=attn_implementation
                )
            except ModelError as exc:
                raise ModelError(f"checkpoint {folder}: {exc.message}", hint=hint) from exc
    processor = load_processor(folder / PROCESSOR_DIR)
    model = BBUModel(
        qwen,
        head_config,
        caption_vocab=vocab,
        text_layer=text_layer,
        vision_source=vision_source,
    )
    model.head.load_state_dict({k: v.float() for k, v in state.items()})
    model.head.float()
    if device is not None:
        model.to(torch.device(device))
    model.eval()
    config_file, taxonomy_file = folder / CONFIG_FILE, folder / TAXONOMY_FILE
    return Checkpoint(
        model=model,
        processor=processor,
        config_yaml=config_file.read_text(encoding="utf-8") if config_file.is_file() else None,
        taxonomy_yaml=taxonomy_file.read_text(encoding="utf-8")
        if taxonomy_file.is_file()
        else None,
        meta=meta,
        path=folder,
    )


# ---- internals -------------------------------------------------------------------------------


def _write_text(file: Path, text: str) -> None:
    with file.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is swapped out and its foreign entries kept."""
    if not out.exists() and not out.is_symlink():
        os.replace(tmp, out)
        return
    if not out.is_dir():
        raise ModelError(
            f"{out} exists and is not a folder", hint="pass a new or checkpoint folder path"
        )
    link_missing(out, tmp, skip=OWNED)
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
