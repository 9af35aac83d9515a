"""Greedy generation of grounding answers with the log-probability of every chosen token.

Decoding is plain greedy (no sampling, one beam, no repetition penalty, no length constraints),
whatever `generation_config.json` the checkpoint carries (Qwen2.5-VL-Instruct ships sampling and a
1.05 repetition penalty): the configuration is built here field by field. It stops at
`<|im_end|>`; the KV cache is switched on explicitly (the tiny model's config has `use_cache`
off for packed training). Batches are left-padded (`StandardDataCollator(padding_side="left")`)
and carry `mm_token_type_ids`, from which transformers builds the 3-D mRoPE positions.

Log-probabilities are recorded while decoding by a logits processor that runs last and keeps,
per step and row, `log_softmax(logits).max()`: with no other processor active that is exactly the
log-probability of the greedy token (checked against the generated ids), without holding
(steps x batch x 151k) logits in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bbucli.errors import ModelError
from bbucli.infer.answers import GeneratedAnswer

#: Batch keys the Qwen2.5-VL generate call takes.
GENERATE_KEYS = (
    "input_ids",
    "attention_mask",
    "pixel_values",
    "image_grid_thw",
    "mm_token_type_ids",
)


class _ChosenLogProb:
    """A transformers logits processor (duck-typed) that records each step's best log-probability."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        best = torch.log_softmax(scores.float(), dim=-1).max(dim=-1)
        # Kept on the device: one host copy after decoding instead of a sync per step.
        self.values.append(best.values)
        self.tokens.append(best.indices)
        return scores


def greedy_config(*, max_new_tokens: int, eos_token_id: int, pad_token_id: int) -> Any:
    """A `GenerationConfig` for plain greedy decoding (module doc)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
        return_dict_in_generate=True,
    )


@torch.inference_mode()
def generate_answers(
    qwen: Any,
    batch: Mapping[str, Any],
    *,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
) -> list[GeneratedAnswer]:
    """Greedy answers for a left-padded prompt batch (tensors on the model's device).

    batch: a `StandardDataCollator(padding_side="left")` dict of prompts ending with the
    generation header `<|im_start|>assistant\\n`; only GENERATE_KEYS are used.
    """
    from transformers import LogitsProcessorList

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    inputs = {k: batch[k] for k in GENERATE_KEYS if batch.get(k) is not None}
    recorder = _ChosenLogProb()
    config = greedy_config(
        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id
    )
    out = qwen.generate(
        **inputs, generation_config=config, logits_processor=LogitsProcessorList([recorder])
    )
    prompt_len = inputs["input_ids"].shape[1]
    generated = out.sequences[:, prompt_len:].cpu()
    steps = generated.shape[1]
    if len(recorder.values) != steps:
        raise ModelError(f"generation recorded {len(recorder.values)} steps for {steps} tokens")
    values = torch.stack(recorder.values, dim=1).cpu() if steps else torch.zeros(len(generated), 0)
    chosen = (
        torch.stack(recorder.tokens, dim=1).cpu()
        if steps
        else torch.zeros(len(generated), 0, dtype=torch.long)
    )

    answers: list[GeneratedAnswer] = []
    for row in range(len(generated)):
        ids = generated[row].tolist()
        stop = ids.index(eos_token_id) if eos_token_id in ids else len(ids)
        if not torch.equal(chosen[row, :stop], generated[row, :stop]):
            raise ModelError(
                "a logits processor changed the greedy choice; the recorded log-probabilities "
                "would not be those of the generated tokens"
            )
        answers.append(
            GeneratedAnswer(tuple(ids[:stop]), tuple(values[row, :stop].tolist()), stop < len(ids))
        )
    return answers
