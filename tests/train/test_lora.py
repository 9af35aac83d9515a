"""LoRA (`model.lora`) on the tiny model with the real peft and transformers classes: a run's loss
falls, the base weights stay bitwise equal while the adapters, the head and the merger move, the
checkpoint holds peft's files and predicts as the model in memory did, and a resumed run has
the losses of an uninterrupted one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bbucli.infer.inference import Inference
from bbucli.model.checkpoint import is_checkpoint, load_checkpoint
from bbucli.model.lora import is_adapter_parameter
from bbucli.schema import read_episodes
from bbucli.train.build import build_run
from bbucli.train.config.loading import load_config
from bbucli.train.run import run_training
from bbucli.train.trainer import RESUME_WEIGHTS

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
STEPS = 6
LORA = (
    "model.lora={r: 4, alpha: 8, dropout: 0.0, targets: [q_proj, v_proj, down_proj, visual.qkv]}",
    f"train.max_steps={STEPS}",
    f"train.save_steps={STEPS}",
    "train.eval_strategy=no",
    "train.lr_scheduler_type=constant",
    "data.val=null",
)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_overrides):
    """(trainer after training, the Qwen weights before it, the config) of a LoRA run."""
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = load_config(TINY, tiny_overrides(out, *LORA))
    parts = build_run(cfg, None)
    model = parts.trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    parts.trainer.train()
    return parts.trainer, before, cfg


def test_loss_falls(lora_run):
    trainer, _, _ = lora_run
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    assert (
        all(b < a for a, b in zip(losses[:-1], losses[1:], strict=True))
        and losses[-1] < 0.9 * losses[0]
    ), losses
    # The LM loss reaches the LLM only through the adapters (and the merger).
    lm = [log["student_lm"] for log in trainer.state.log_history if "loss" in log]
    assert lm[-1] < lm[0], lm


def test_only_adapters_head_and_merger_move(lora_run):
    trainer, before, _ = lora_run
    moved, still, adapters = set(), set(), 0
    for name, param in trainer.model.named_parameters():
        (moved if not torch.equal(param.detach(), before[name]) else still).add(name)
        if is_adapter_parameter(name):
            adapters += 1
            assert param.dtype == torch.float32 and param.requires_grad, name
    # 2 LLM layers x (q_proj, v_proj, down_proj) + 2 ViT blocks x qkv, A and B each.
    assert adapters == 2 * (2 * 3 + 2)
    base = [n for n in before if n.startswith("qwen.") and not is_adapter_parameter(n)]
    base = [n for n in base if not n.startswith("qwen.model.visual.merger.")]
    assert base and all(n in still for n in base), sorted(set(base) & moved)[:3]
    # Every B starts at zero and moves; the head and the merger train fully.
    assert all(n in moved for n in before if ".lora_B." in n)
    assert any(n.startswith("head.") for n in moved)
    assert any(n.startswith("qwen.model.visual.merger.") for n in moved)
    # LoRA weights sit in the group of the module they wrap.
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    llm_ids = {id(p) for g in ("llm", "llm.no_decay") if g in groups for p in groups[g]["params"]}
    trainable_llm = {
        id(p)
        for n, p in trainer.model.named_parameters()
        if n.startswith("qwen.model.language_model.") and p.requires_grad
    }
    assert trainable_llm and llm_ids == trainable_llm
    assert all(".lora_" in n for n, p in trainer.model.named_parameters() if id(p) in llm_ids)


def test_checkpoint_is_peft_format_and_predicts_as_in_memory(lora_run, tiny_data):
    trainer, _, cfg = lora_run
    ckpt = Path(cfg.train.output_dir) / f"checkpoint-{STEPS}"
    assert is_checkpoint(ckpt) and not (ckpt / "qwen").exists()
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 4
    assert (ckpt / "adapter_model.safetensors").is_file() and (
        ckpt / "merger.safetensors"
    ).is_file()
    meta = json.loads((ckpt / "bbu.json").read_text())
    assert meta["lora"]["base"] == "tiny" and meta["lora"]["merger_trained"] is True

    loaded = load_checkpoint(ckpt)
    memory = dict(trainer.model.named_parameters())
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param.float(), memory[name].detach().float()), name
    image = str(tiny_data / read_episodes(tiny_data / "bbu.val.jsonl")[0].student.image)
    from_disk = Inference.of_checkpoint(loaded, device="cpu")
    in_memory = Inference(
        trainer.model,
        loaded.processor,
        loaded.prompts(),
        device="cpu",
        max_tokens=loaded.max_tokens,
        class_descs=loaded.class_descs(),
        teachers=from_disk.teachers,
    )
    (a,) = from_disk.predict_detection([image])
    (b,) = in_memory.predict_detection([image])
    assert len(a.boxes_px) > 0
    assert torch.equal(torch.as_tensor(a.boxes_px), torch.as_tensor(b.boxes_px))
    assert torch.equal(torch.as_tensor(a.scores), torch.as_tensor(b.scores))
    assert list(a.descs) == list(b.descs)


def test_a_resumed_lora_run_has_the_uninterrupted_losses(tiny_overrides, tmp_path):
    # Adapter dropout and activation checkpointing on: the resumed run must restore the RNG as
    # well as the adapters.
    more = (
        "model.lora={r: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj]}",
        "train.max_steps=4",
        "train.save_steps=2",
        "train.eval_strategy=no",
        "train.activation_checkpointing=true",
        "data.val=null",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same CPU reduction order in both runs
    try:
        reference = run_training(load_config(TINY, tiny_overrides(tmp_path / "ref", *more)))
        checkpoint = tmp_path / "ref" / "checkpoint-2"
        resumed_cfg = load_config(
            TINY, tiny_overrides(tmp_path / "resumed", *more, f"train.resume={checkpoint}")
        )
        resumed = run_training(resumed_cfg)
    finally:
        torch.set_num_threads(threads)
    assert (checkpoint / "adapter_model.safetensors").is_file()
    # The Trainer's resume state holds what trains, not the frozen base it is rebuilt from.
    with safe_open(checkpoint / RESUME_WEIGHTS, "pt") as state:
        keys = set(state.keys())
    assert any(".lora_A." in k for k in keys) and any(k.startswith("head.") for k in keys)
    assert not any(k.endswith(".base_layer.weight") or "embed_tokens" in k for k in keys)
    assert resumed.resumed_from == checkpoint and [s for s, _ in resumed.losses] == [3, 4]
    # Gradients reach the adapters through the checkpointed layers: every B left zero.
    final = load_checkpoint(resumed.final_checkpoint).model.named_parameters()
    lora_b = [p for n, p in final if ".lora_B." in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)
    expected = dict(reference.losses)
    for step, loss in resumed.losses:
        assert loss == expected[step], (step, loss, expected[step])


def _logits(qwen, image_token_id: int) -> torch.Tensor:
    """Logits of one fixed text + image input (a 4x4-patch image: 4 merged tokens)."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(16, 1176, generator=generator)
    ids = torch.tensor([[151644, 872, 198, 151652, *[image_token_id] * 4, 151653, 3838, 374]])
    with torch.no_grad():
        out = qwen(input_ids=ids, pixel_values=pixels, image_grid_thw=torch.tensor([[1, 4, 4]]))
    return out.logits.float()


def test_export_loads_in_plain_transformers_with_the_same_logits(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from bbucli.model.export import export_checkpoint

    _, _, cfg = lora_run
    ckpt = Path(cfg.train.output_dir) / f"checkpoint-{STEPS}"
    loaded = load_checkpoint(ckpt, attn_implementation="sdpa")
    image_token = int(loaded.model.qwen.config.image_token_id)
    expected = _logits(loaded.model.qwen, image_token)

    merged = export_checkpoint(ckpt, tmp_path / "merged", merge=True)
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(merged).eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert (merged / "head.safetensors").is_file() and not (merged / "adapter").exists()
    torch.testing.assert_close(_logits(plain, image_token), expected, atol=1e-5, rtol=0)

    separate = export_checkpoint(ckpt, tmp_path / "separate", merge=False)
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(separate).eval()
    # Without its adapter the base answers differently: the adapter is what was trained.
    assert (_logits(base, image_token) - expected).abs().max() > 1e-3
    adapted = PeftModel.from_pretrained(base, separate / "adapter").eval()
    torch.testing.assert_close(_logits(adapted, image_token), expected, atol=1e-5, rtol=0)


def test_export_cli_refuses_a_folder_in_use(lora_run, tmp_path):
    from typer.testing import CliRunner

    from bbucli.cli.app import app

    _, _, cfg = lora_run
    ckpt = Path(cfg.train.output_dir) / f"checkpoint-{STEPS}"
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(used), "--merge"])
    assert result.exit_code == 1 and "is not an empty folder" in result.output
    assert sorted(p.name for p in used.iterdir()) == ["keep.txt"]


def test_dry_run_counts_trainable_and_frozen_parameters_per_group(tiny_overrides, tmp_path):
    lora = "model.lora={r: 4, alpha: 8, dropout: 0.0, targets: [q_proj, v_proj]}"
    cfg = load_config(TINY, tiny_overrides(tmp_path / "dry", lora))
    rows = {r.group: r for r in run_training(cfg, dry_run=True).dry_run.groups}
    spec = cfg.model.lora
    text = _tiny_text_config()
    # q_proj: hidden -> heads*head_dim, v_proj: hidden -> kv_heads*head_dim, r x (in + out) each.
    head_dim = text.hidden_size // text.num_attention_heads
    per_layer = spec.r * (text.hidden_size + text.num_attention_heads * head_dim)
    per_layer += spec.r * (text.hidden_size + text.num_key_value_heads * head_dim)
    assert rows["llm"].trainable == text.num_hidden_layers * per_layer < rows["llm"].params
    assert rows["vision"].trainable == 0 < rows["vision"].params
    assert rows["merger"].trainable == rows["merger"].params > 0
    assert rows["detection"].trainable == rows["detection"].params > 0


def _tiny_text_config():
    from bbucli.model.loading import tiny_config

    return tiny_config().text_config


def test_zero2_lora_run_matches_the_plain_lora_run(lora_run, tiny_overrides, tmp_path):
    import os
    import subprocess
    import sys

    from bbucli.train.launch import free_port

    trainer, _, _ = lora_run
    plain = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    out = tmp_path / "zero2"
    zero2 = TINY.parent / "deepspeed" / "zero2.json"
    overrides = tiny_overrides(out, *LORA, "train.max_steps=2", "train.save_steps=2")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.run(
        [sys.executable, "-m", "bbucli", "train", str(TINY), *overrides, f"deepspeed={zero2}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    assert losses[0] == pytest.approx(plain[0], rel=1e-6) and losses[1] == pytest.approx(
        plain[1], rel=1e-4
    )
    loaded = load_checkpoint(out / "checkpoint-2")
    assert loaded.meta["lora"]["targets"] == ["q_proj", "v_proj", "down_proj", "visual.qkv"]
    assert any(".lora_B." in n for n, _ in loaded.model.named_parameters())


def test_a_half_base_stays_half_without_deepspeed(tmp_path, tiny_overrides):
    """model.dtype bf16 without DeepSpeed keeps fp32 master weights of what trains; under LoRA the
    frozen base needs none, so it loads bf16 (half the memory) while adapters, merger and head are
    fp32, and a step under bf16 autocast trains them."""
    cfg = load_config(
        TINY,
        tiny_overrides(tmp_path / "run", *LORA, "model.dtype=bf16", "train.max_steps=1"),
        target="gpu",  # the GPU rules, run here on the CPU (bf16 autocast works on both)
    )
    parts = build_run(cfg, None)
    model = parts.trainer.model
    merger = "qwen.model.visual.merger."
    dtypes = {
        kind: {p.dtype for n, p in model.named_parameters() if test(n)}
        for kind, test in (
            (
                "base",
                lambda n: n.startswith("qwen.") and not is_adapter_parameter(n) and merger not in n,
            ),
            ("adapters", is_adapter_parameter),
            ("merger", lambda n: merger in n),
            ("head", lambda n: n.startswith("head.")),
        )
    }
    assert dtypes == {
        "base": {torch.bfloat16},
        "adapters": {torch.float32},
        "merger": {torch.float32},
        "head": {torch.float32},
    }
    assert parts.trainer.args.bf16
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    parts.trainer.train()
    loss = [log["loss"] for log in parts.trainer.state.log_history if "loss" in log]
    assert len(loss) == 1 and math.isfinite(loss[0])
    moved = {
        n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])
    }
    assert any(is_adapter_parameter(n) for n in moved) and any(merger in n for n in moved)
