"""The classes a checkpoint predicts are the classes it was trained on.

The bundled examples are converted with `--levels 2` and `--unknown keep` (one label made unknown),
`configs/tiny.yaml` trains one short step on them, and the checkpoint's system prompt and head
candidates must be exactly the descs of that data: the cut screw classes and the kept unknown
label included, no three-level taxonomy name the data does not hold. Then the head's class scoring
(trimmed class captions, top queries only) must label and score the kept boxes as scoring every
query against 32-token captions does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from bbucli.chat.prompts import build_prompts
from bbucli.convert.pipeline import ConvertOptions, convert_dataset
from bbucli.infer.inference import Inference
from bbucli.loss.multitask import caption_token_ids
from bbucli.model.caption_vocab import PAD
from bbucli.model.checkpoint import load_checkpoint
from bbucli.model.trained_with import TrainedWith
from bbucli.schema import read_episodes
from bbucli.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.yaml"
MAX_PIXELS = 64 * 28 * 28
UNKNOWN_ZH, UNKNOWN_EN = "机柜/新型走线架/已安装", "cabinet/new_cable_tray/installed"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """(final checkpoint, the sorted descs of its train and teacher-pool JSONL)."""
    from bbucli.train.config.loading import load_config
    from bbucli.train.run import run_training

    root = tmp_path_factory.mktemp("trained_classes")
    raw = root / "raw"
    shutil.copytree(ROOT / "examples" / "raw", raw)
    first = sorted(raw.glob("*.json"))[0]
    record = json.loads(first.read_text(encoding="utf-8"))
    properties = record["markResult"]["features"][0]["properties"]
    properties["contentZh"]["标签"], properties["content"]["label"] = UNKNOWN_ZH, UNKNOWN_EN
    first.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    data = root / "data"
    options = ConvertOptions(levels=2, unknown="keep", val_ratio=0.0, max_pixels=MAX_PIXELS)
    convert_dataset(raw, data / "bbu.jsonl", options)
    samples = [s for e in read_episodes(data / "bbu.jsonl") for s in e.samples]
    samples += [e.student for e in read_episodes(data / "bbu.teachers.jsonl")]
    classes = tuple(sorted({o.desc for s in samples for o in s.objects}))
    overrides = [
        f"data.train={data / 'bbu.jsonl'}",
        f"data.teachers={data / 'bbu.teachers.jsonl'}",
        "data.val=null",
        f"train.output_dir={root / 'run'}",
        f"model.max_pixels={MAX_PIXELS}",
        "detection.width=32",
        "detection.layers=1",
        "detection.heads=2",
        "detection.ffn=64",
        "detection.max_queries=64",
        "data.num_teachers=0",  # one student per step, 64 LM tokens: the step is not the point
        "data.packing=false",
        "data.batch_size=1",
        "loss.lm_max_tokens=64",
        "train.max_steps=1",
        "train.eval_strategy=no",
        "train.save_strategy=no",
        "train.warmup_steps=0",
    ]
    result = run_training(load_config(TINY, overrides))
    return result.final_checkpoint, classes


def test_every_trained_class_is_a_head_candidate_and_can_be_predicted(trained, tiny_image):
    final, classes = trained
    assert UNKNOWN_ZH in classes and "连接点（螺丝）/BBU安装螺丝" in classes
    assert all(d.count("/") == 1 for d in classes if d != UNKNOWN_ZH)  # cut to two levels
    inference = Inference.from_checkpoint(final, device="cpu", hypotheses=len(classes))
    assert inference.class_descs == classes
    absent = set(Taxonomy.load().descs("zh")) - set(classes)
    assert not absent & set(inference.class_descs)  # no taxonomy name the data does not hold
    # Every query offers every class: each trained class comes out as a scored box.
    [dets] = inference.predict_detection([tiny_image(final)], top_k=None)
    assert set(dets.descs) == set(classes)


def test_the_system_prompt_lists_exactly_the_trained_classes(trained):
    final, classes = trained
    checkpoint = load_checkpoint(final)
    assert checkpoint.trained_with.classes == classes
    system = checkpoint.prompts().system
    listed = [line[2:] for line in system.splitlines() if line.startswith("- ")]
    assert listed == list(classes)
    three_levels = {d for d in Taxonomy.load().descs("zh") if d.count("/") == 2}
    assert three_levels - set(classes) and not any(d in system for d in three_levels - set(classes))
    # Inference rebuilds, from the stored list, the prompt training saved.
    assert build_prompts(checkpoint.class_descs(), "zh") == checkpoint.prompts()


def test_classes_round_trip_and_an_older_checkpoint_falls_back_to_its_taxonomy(trained):
    final, classes = trained
    facts = TrainedWith(lang="en", classes=classes)
    assert TrainedWith.from_mapping(json.loads(json.dumps(facts.to_dict()))) == facts
    assert TrainedWith.from_mapping({"classes": "not a list"}).classes is None
    checkpoint = load_checkpoint(final)
    meta = json.loads((final / "bbu.json").read_text(encoding="utf-8"))
    del meta["trained_with"]["classes"]
    older = replace(checkpoint, meta=meta)
    assert older.trained_with.classes is None
    assert older.class_descs() == Taxonomy.load().descs("zh")


# ---- class scoring: trimmed captions, top queries only -------------------------------------


@pytest.fixture(scope="module")
def tiny_image():
    """image(checkpoint) -> the path of one training image of that checkpoint's data."""

    def image(final: Path) -> str:
        config = yaml.safe_load((final / "config.yaml").read_text(encoding="utf-8"))
        data = Path(config["data"]["train"])
        return str(data.parent / read_episodes(data)[0].student.image)

    return image


def untrimmed(inference: Inference, out, top_k: int | None, hypotheses: int):
    """The reference: every valid query x every class, captions padded to caption_max_len."""
    model, tokenizer = inference.model, inference.tokenizer
    descs = inference.class_descs
    captions = [caption_token_ids(tokenizer, d) for d in descs]
    targets = model.caption_vocab.targets(captions, model.head.config.caption_max_len)
    n = int(out.query_mask[0].sum())
    hidden = out.hidden[0, :n].float().repeat_interleave(len(descs), 0)
    logits = model.head.caption_logits(hidden, targets.repeat(n, 1)).float()
    nll = F.cross_entropy(
        logits.transpose(1, 2), targets.repeat(n, 1), ignore_index=PAD, reduction="none"
    )
    best, which = (-nll.sum(-1)).view(n, len(descs)).softmax(-1).topk(hypotheses, dim=-1)
    scores = (torch.sigmoid(out.pred_logits[0, :n].float())[:, None] * best).flatten()
    order = torch.argsort(scores, descending=True)[:top_k]
    return [descs[int(c)] for c in which.flatten()[order]], scores[order], order // hypotheses


@pytest.mark.parametrize("hypotheses", [1, 3])
def test_class_scoring_trims_captions_and_scores_the_top_queries_only(
    trained, tiny_image, hypotheses
):
    final, _ = trained
    inference = Inference.from_checkpoint(final, device="cpu", hypotheses=hypotheses)
    prepared = inference.prompt_builder.prepare(tiny_image(final))
    with torch.inference_mode():
        out = inference.model(inference.collate([prepared.sample])).head
    n = int(out.query_mask[0].sum())
    # A trained head's objectness: a few confident queries (anywhere in query order), then a tail.
    logits = -6.0 - 0.05 * torch.arange(n, dtype=torch.float32)
    confident = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:4]
    logits[confident] = torch.tensor([6.0, 5.0, 4.5, 4.0])
    padded = torch.full_like(out.pred_logits, -1e4)
    padded[0, :n] = logits
    out = replace(out, logits=(padded,))
    decode, top_k = inference.decode_head, 4
    seen: list[tuple[int, ...]] = []  # the caption targets of every caption decoder call
    hook = inference.model.head.caption_decoder.register_forward_hook(
        lambda m, a, o: seen.append(tuple(a[1].shape))
    )
    try:
        with torch.inference_mode():
            [dets] = decode(out, ["x"], [prepared.image_wh], None, top_k)
            calls, seen[:] = list(seen), []
            [every] = decode(out, ["x"], [prepared.image_wh], None, None)
            every_calls, seen[:] = list(seen), []
            descs, scores, queries = untrimmed(inference, out, top_k, hypotheses)
            all_descs, all_scores, _ = untrimmed(inference, out, None, hypotheses)
    finally:
        hook.remove()
    classes, max_len = len(decode.class_descs), inference.model.head.config.caption_max_len
    longest = 1 + max(len(caption_token_ids(inference.tokenizer, d)) for d in decode.class_descs)
    # Captions padded to the longest class and its EOS, not to caption_max_len ...
    assert {length for _, length in calls} == {longest} and longest < max_len
    # ... and only the confident queries scored (in chunks of ceil(top_k / hypotheses)): no
    # other query can reach the top_k, as a pair scores at most its query's objectness.
    assert sum(rows for rows, _ in calls) == 4 * classes < n * classes
    assert list(dets.descs) == descs and len(descs) == top_k
    assert torch.allclose(torch.as_tensor(dets.scores, dtype=torch.float32), scores, atol=1e-6)
    assert set(queries.tolist()) <= set(confident.tolist())
    # Without top_k every query is scored (against the trimmed captions): the same pairs.
    assert sum(rows for rows, _ in every_calls) == n * classes
    assert sorted(every.descs) == sorted(all_descs)
    assert torch.allclose(torch.as_tensor(every.scores, dtype=torch.float32), all_scores, atol=1e-6)
