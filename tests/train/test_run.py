"""Plain training in this process: what is logged, the run folder, checkpoints that load back and
that the Trainer can resume from, the dry run, the dataset's skips and teacher re-draw, and a
diverging run that stops with the step named and its last good checkpoint intact."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bbucli.data.dataset import EpisodeDataset, EpochBatches, redraw_teachers
from bbucli.model.checkpoint import is_checkpoint, load_checkpoint
from bbucli.schema import DetObject, Episode, read_episodes
from bbucli.train.config.loading import load_config
from bbucli.train.run import resolve_resume, run_training
from bbucli.train.trainer import TrainingDiverged, latest_checkpoint

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
COMPONENTS = ("teacher_lm", "student_lm", "l1", "giou", "objectness", "objectness_token", "caption")
GROUPS = ("vision", "merger", "llm", "detection", "adapter")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_step_logs_components_group_rates_and_throughput(plain_run):
    _, result = plain_run
    assert result.global_step == 2 and [s for s, _ in result.losses] == [1, 2]
    steps = [m for m in metrics(result.output_dir) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for log in steps:
        assert math.isfinite(log["loss"])
        for key in (*COMPONENTS, *(f"lr_{g}" for g in GROUPS), "tokens_per_s", "vision_share", "padding"):
            assert key in log, key
        assert 0 < log["vision_share"] < 1 and 0 <= log["padding"] < 1
    assert steps[0]["lr_llm"] == pytest.approx(1e-3)  # the rate the first update used
    assert steps[1]["lr_llm"] < steps[0]["lr_llm"]  # linear decay
    evals = [m for m in metrics(result.output_dir) if "eval_loss" in m]
    assert evals and all(f"eval_{k}" in evals[0] for k in COMPONENTS)
    assert result.best_checkpoint == result.output_dir / "checkpoint-2"
    assert result.best_metric == pytest.approx(evals[-1]["eval_loss"])


def test_run_folder_and_checkpoints(plain_run):
    overrides, result = plain_run
    out = result.output_dir
    assert "model:" in (out / "config.yaml").read_text() and (out / "taxonomy.yaml").is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["bbucli"] and info["world_size"] == 1 and info["train"]["samples"] == 2
    ckpt = out / "checkpoint-2"
    for name in (
        "qwen",
        "processor",
        "head.safetensors",
        "bbu.json",
        "config.yaml",
        "taxonomy.yaml",
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    ):
        assert (ckpt / name).exists(), name
    assert is_checkpoint(result.final_checkpoint) and not (result.final_checkpoint / "optimizer.pt").exists()
    assert latest_checkpoint(out) == ckpt
    loaded = load_checkpoint(ckpt)
    assert loaded.meta["extra"]["step"] == 2 and loaded.prompts().system
    final = load_checkpoint(result.final_checkpoint)
    # Two steps and nothing after the last save: checkpoint-2 and final hold the same weights.
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), final.model.state_dict().items(), strict=True):
        assert torch.equal(a.float(), b.float()), name
    assert resolve_resume(load_config(TINY, [*overrides, "train.resume=true"])) == ckpt


def test_used_output_dir_is_refused_and_final_cannot_be_resumed(plain_run):
    from bbucli.errors import ConfigError

    overrides, result = plain_run
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        run_training(load_config(TINY, overrides))
    with pytest.raises(ConfigError, match="trainer_state.json"):
        resolve_resume(load_config(TINY, [*overrides, f"train.resume={result.final_checkpoint}"]))


def test_dry_run_reports_one_batch_and_writes_nothing(tiny_overrides, tmp_path):
    out = tmp_path / "dry"
    result = run_training(load_config(TINY, tiny_overrides(out, "optim.lrs.vision=0")), dry_run=True)
    report = result.dry_run
    assert report is not None and not out.exists()
    assert report.shapes["batch.input_ids"][0] == 1 and report.shapes["batch.position_ids"][0] == 4
    assert report.shapes["output.head.logits"][0] == report.shapes["batch.prompt_end"][0]
    rows = {r.group: r for r in report.groups}
    assert set(rows) == set(GROUPS) and rows["vision"].trainable == 0 < rows["vision"].params
    assert rows["llm"].trainable == rows["llm"].params > 0
    assert math.isfinite(report.losses["loss"]) and report.memory_gb["peak_rss"] > 0
    assert 0 < report.vision_tokens < report.tokens


def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_overrides, tmp_path):
    # A learning rate of 1e30 makes step 1's update explode: step 2's predictions are not finite.
    out = tmp_path / "nan"
    lrs = [f"optim.lrs.{g}=1e30" for g in GROUPS]
    cfg = load_config(
        TINY,
        tiny_overrides(
            out, *lrs, "train.max_steps=3", "train.save_steps=1", "train.eval_strategy=no"
        ),
    )
    with pytest.raises(TrainingDiverged, match="step 2") as info:
        run_training(cfg)
    assert "checkpoint-1" in info.value.message and info.value.hint
    assert latest_checkpoint(out) == out / "checkpoint-1" and not (out / "checkpoint-2").exists()
    model = load_checkpoint(out / "checkpoint-1").model
    assert all(torch.isfinite(p).all() for p in model.head.parameters())
    assert not [m for m in metrics(out) if m.get("step") == 2 and "loss" in m]


# ---- the dataset ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat():
    from bbucli.chat.loading import load_processor
    from bbucli.chat.processor import ChatProcessor
    from bbucli.chat.prompts import build_prompts
    from bbucli.taxonomy import Taxonomy

    prompts = build_prompts(Taxonomy.load().descs("zh"), "zh")
    return ChatProcessor(
        load_processor("tiny", max_pixels=64 * 28 * 28),
        system_prompt=prompts.system,
        instruction=prompts.instruction,
        max_tokens=1024,
    )


def test_over_budget_students_are_skipped_and_counted(tiny_data, chat):
    episodes = read_episodes(tiny_data / "bbu.jsonl")
    first = episodes[0]
    huge = Episode(
        student=type(first.student)(first.student.images, first.student.objects * 60),
        teachers=first.teachers,
    )
    dataset = EpisodeDataset([*episodes, huge], chat, tiny_data)
    assert len(dataset) == len(episodes) and dataset.stats.skipped_too_long == 1
    assert dataset.stats.tokens == sum(dataset.lengths())
    sample = dataset[0]
    assert sample.length == dataset.lengths()[0]


def test_teacher_redraw_is_seeded_per_epoch(tiny_data, chat):
    data = tiny_data
    episodes = read_episodes(data / "bbu.jsonl")
    pool = [e.student for e in read_episodes(data / "bbu.teachers.jsonl")]
    dataset = EpisodeDataset(episodes, chat, data, teacher_pool=pool, resample=True, seed=3)
    epoch0 = [e.teachers for e in dataset.current]
    assert epoch0 == [e.teachers[:1] for e in episodes]  # epoch 0 keeps the JSONL's teachers
    draws = {}
    for epoch in (1, 2, 1):
        dataset.set_epoch(epoch)
        drawn = [e.teachers for e in dataset.current]
        assert draws.setdefault(epoch, drawn) == drawn  # the same epoch draws the same
        assert all(len(t) == 1 and t[0] in pool for t in drawn)
    dataset.set_epoch(0)
    assert [e.teachers for e in dataset.current] == epoch0
    dataset.set_epoch(1)
    picked = redraw_teachers(episodes[0].student, pool, 1, seed=3, epoch=1)
    assert dataset.current[0].teachers == picked  # the dataset's draw is the policy's


def test_batches_are_a_function_of_seed_and_epoch_and_split_over_ranks(tiny_data, chat):
    data = tiny_data
    dataset = EpisodeDataset(read_episodes(data / "bbu.jsonl"), chat, data)
    lengths = dataset.lengths()
    batches = EpochBatches(dataset, packed=True, max_tokens_per_batch=1024, seed=0)
    assert len(batches) == len(lengths) and all(len(b) == 1 for b in batches)
    orders = []
    for epoch in (0, 1, 0):
        batches.set_epoch(epoch)
        orders.append(list(batches))
    n = len(lengths)
    assert orders[0] == orders[2] and sorted(map(tuple, orders[0])) == [(i,) for i in range(n)]
    ranks = [
        list(EpochBatches(dataset, packed=True, max_tokens_per_batch=1024, num_replicas=2, rank=r))
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == -(-n // 2)
    assert sorted(i for r in ranks for b in r for i in b) == list(range(n))
    padded = EpochBatches(dataset, packed=False, max_tokens_per_batch=0, batch_size=2, seed=0)
    assert sorted(i for b in padded for i in b) == list(range(n)) and len(padded) == -(-n // 2)


def test_object_boxes_survive_the_dataset(tiny_data, chat):
    episode = read_episodes(tiny_data / "bbu.jsonl")[0]
    dataset = EpisodeDataset([episode], chat, tiny_data, num_teachers=0)
    sample = dataset[0]
    assert sample.gt_descs == tuple(o.desc for o in episode.student.objects)
    assert isinstance(episode.student.objects[0], DetObject) and sample.image_grid_thw.shape[0] == 1


def test_length_grouped_batches_pad_less_and_still_cover_the_split(tiny_data, chat):
    dataset = EpisodeDataset(read_episodes(tiny_data / "bbu.jsonl"), chat, tiny_data, num_teachers=0)
    lengths = dataset.lengths()

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = EpochBatches(dataset, packed=False, max_tokens_per_batch=0, batch_size=3, seed=0)
    grouped = EpochBatches(dataset, packed=False, max_tokens_per_batch=0, batch_size=3, seed=0, group_by_length=True)
    assert len(grouped) == len(plain)
    epochs = []
    for epoch in (0, 1, 0):
        grouped.set_epoch(epoch)
        plain.set_epoch(epoch)
        batches = list(grouped)
        epochs.append(batches)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert padding(batches) <= padding(list(plain))
        # One window holds the whole split here: the batches are consecutive runs of the sorted lengths.
        runs = sorted((sorted((lengths[i] for i in b), reverse=True) for b in batches), reverse=True)
        flat = [v for run in runs for v in run]
        assert flat == sorted(flat, reverse=True)
    assert epochs[0] == epochs[2]
