"""benchmarks/gpu.py on the CPU with the tiny model: every section runs and records numbers, packed
equals padded in fp32, the packed row does not leak (and the KV-cache control does), and the JSON
lands where --out says."""

from __future__ import annotations

import json
import math

import pytest

from tests.benchmark_scripts import benchmark_module

SECTIONS = ("setup", "packed_equals_padded", "train_step_3b", "inference", "zero2")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpu():
    with benchmark_module("gpu") as module:
        yield module


@pytest.fixture(scope="module")
def results(gpu, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    args = (
        "--device cpu --tiny --steps 1 --warmup 0 --images 1 --max-new-tokens 4 --time-budget 1e9"
    )
    returned = gpu.main([*args.split(), "--out", str(out)])
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["sections"].keys() == returned["sections"].keys()
    return written


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_section_has_numbers(results):
    sections = results["sections"]
    assert tuple(sections) == SECTIONS
    errors = {k: v["error"] for k, v in sections.items() if "error" in v}
    assert errors == {}
    assert results["machine"]["torch"] and results["machine"]["transformers"]
    assert sections["setup"]["use_cache_in_text_config"] is True
    assert len(sections["setup"]["train_row_tokens"]) >= 2  # packed vs padded needs a real bin
    train = sections["train_step_3b"]
    for layout in ("packed", "padded"):
        entry = train[layout]
        for key in ("step_s", "tokens_per_s", "tflop_per_s", "mfu_llm_plus_vision"):
            assert positive(entry[key]), (layout, key, entry[key])
        assert positive(entry["peak_memory_gib"])
    assert train["padded"]["row_slots"] > train["packed"]["row_slots"]  # padding
    assert train["flops"]["llm_tflop"] > 0 and train["flops"]["vision_tflop"] > 0
    for source in ("head", "lm"):
        assert positive(sections["inference"][source]["latency_ms"])
    assert 1 <= sections["inference"]["lm"]["generated_tokens_mean"] <= 4
    zero2 = sections["zero2"]
    assert zero2["status"] == "ok" and zero2["zero_stage"] == 2 and zero2["bf16"] is False
    assert positive(zero2["step_s"]) and positive(zero2["tokens_per_s"])


def test_packed_equals_padded_in_fp32_without_leaks(results):
    eq = results["sections"]["packed_equals_padded"]
    assert eq["dtype"] == "float32" and eq["tolerance"] == 1e-4
    assert eq["lm_logits_max_abs_diff"] <= 1e-4 and eq["head_max_abs_diff"] <= 1e-4
    assert eq["within_tolerance"] is True and eq["head_query_sets_equal"] is True
    assert eq["leak_later_samples_hidden_max_abs_diff"] <= 1e-5
    assert eq["leak_later_samples_head_max_abs_diff"] <= 1e-5
    # The check can see a leak: the changed sample moves, and with a KV cache the others do too.
    assert eq["leak_changed_sample_hidden_max_abs_diff"] > 1e-2
    assert eq["leak_control_kv_cache_hidden_max_abs_diff"] > 1e-2
    assert eq["leak_free"] is True


def test_flops_follow_the_stated_formula(gpu):
    """The vision windows of a 6 x 10 merged grid (4 x 4 merged cells per window): 2 x 3 windows
    of 4x4, 4x4, 4x2 and 2x4, 2x4, 2x2 cells, 4 patches per cell."""
    import torch

    from bbucli.model.loading import tiny_config

    vision = tiny_config().vision_config
    sizes = gpu.window_sizes(torch.tensor([[1, 12, 20]]), vision)
    assert sizes == [64, 64, 32, 32, 32, 16]
    assert sum(sizes) == 12 * 20
