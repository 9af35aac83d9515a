"""bbu: fine-tune Qwen2.5-VL to inspect telecom BBU cabinets.

Public names are imported lazily so that `bbu --help` does not pay for importing torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    "BbuError": "bbucli.errors",
    "Episode": "bbucli.schema",
    "Sample": "bbucli.schema",
    "DetObject": "bbucli.schema",
    "read_episodes": "bbucli.schema",
    "Taxonomy": "bbucli.taxonomy",
    "ConvertOptions": "bbucli.convert.pipeline",
    "convert_dataset": "bbucli.convert.pipeline",
    "load_processor": "bbucli.chat.loading",
    "load_model": "bbucli.model.loading",
    "ChatProcessor": "bbucli.chat.processor",
    "ChatProcessorOutput": "bbucli.chat.processor",
    "render_answer": "bbucli.chat.answer",
    "parse_answer": "bbucli.chat.answer",
    "build_prompts": "bbucli.chat.prompts",
    "StandardDataCollator": "bbucli.data.collators",
    "PackedDataCollator": "bbucli.data.collators",
    "TokenBudgetBatchSampler": "bbucli.data.sampler",
    "DetectionHead": "bbucli.model.head",
    "HeadConfig": "bbucli.model.head",
    "CaptionVocab": "bbucli.model.caption_vocab",
    "HungarianMatcher": "bbucli.loss.matcher",
    "hungarian_matcher": "bbucli.loss.matcher",
    "DetectionCriterion": "bbucli.loss.detection",
    "evaluate": "bbucli.evaluation",
    "EvalResult": "bbucli.evaluation",
    "Detections": "bbucli.evaluation",
    "GroundTruth": "bbucli.evaluation",
    "read_ground_truth": "bbucli.evaluation",
    "read_predictions": "bbucli.evaluation",
    "Inference": "bbucli.infer.inference",
    "BBUModel": "bbucli.model.bbu_model",
    "save_checkpoint": "bbucli.model.checkpoint",
    "load_checkpoint": "bbucli.model.checkpoint",
    "load_config": "bbucli.train.config.loading",
    "BbuConfig": "bbucli.train.config.loading",
    "run_training": "bbucli.train.run",
}


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'bbucli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["__version__", *_PUBLIC]
