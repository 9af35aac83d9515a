"""BBUModel on the tiny Qwen2.5-VL: shapes of padded and packed batches, what the head's memory is
made of (the student image's merger tokens, the student turn's hidden states), and what never
reaches it (teacher images, other packed samples, answer tokens)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bbucli.chat.loading import load_processor
from bbucli.chat.processor import ChatProcessor, ChatProcessorOutput
from bbucli.data.collators import PackedDataCollator, StandardDataCollator
from bbucli.chat.rope import mrope_position_ids
from bbucli.errors import ConfigError
from bbucli.model.bbu_model import BBUModel
from bbucli.model.head import HeadConfig
from bbucli.model.loading import load_model
from bbucli.loss.multitask import build_caption_vocab
from bbucli.model.pixel_stem import student_pixels
from bbucli.schema import DetObject, Episode, Sample

PAD = 151643
DESCS = ("screw/install/ok", "label/sticker/mismatch")
HEAD = dict(width=64, layers=2, heads=4, ffn=128, caption_max_len=8)
SIZES = {"a.png": (56, 84), "a2.png": (56, 84), "b.png": (112, 56), "t.png": (84, 56),
         "t2.png": (84, 56)}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (w, h) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


def episode(student: str, teacher: str | None = None, boxes=((1, 2, 30, 40),)) -> Episode:
    objects = tuple(DetObject(b, DESCS[i % 2]) for i, b in enumerate(boxes))
    teachers = (
        () if teacher is None else (Sample((teacher,), (DetObject((2, 2, 20, 20), DESCS[1]),)),)
    )
    return Episode(student=Sample((student,), objects), teachers=teachers)


@pytest.fixture(scope="module")
def chat(processor) -> ChatProcessor:
    return ChatProcessor(processor, system_prompt="Find objects.", instruction="Detect.")


@pytest.fixture(scope="module")
def samples(chat, root) -> dict[str, ChatProcessorOutput]:
    """one: a.png alone; two: b.png after teacher t.png; two_t2: the same with teacher t2.png
    (other pixels); one_a2: a.png swapped for a2.png (other pixels, same size)."""
    return {
        "one": chat.process_sample(episode("a.png"), root),
        "one_a2": chat.process_sample(episode("a2.png"), root),
        "two": chat.process_sample(episode("b.png", "t.png", ((3, 4, 50, 50), (60, 5, 99, 44))), root),
        "two_t2": chat.process_sample(episode("b.png", "t2.png", ((3, 4, 50, 50), (60, 5, 99, 44))), root),
        "two_other_answer": chat.process_sample(episode("b.png", "t.png", ((7, 9, 11, 13),)), root),
    }  # fmt: skip


def text_only_sample(processor) -> ChatProcessorOutput:
    """A 0-image conversation with one answer, built like ChatProcessor's output."""
    messages = [
        {"role": "system", "content": "Find objects."},
        {"role": "user", "content": "No image this time."},
        {"role": "assistant", "content": "[]"},
    ]
    tok = processor.tokenizer
    prompt = tok(processor.apply_chat_template(messages[:2], add_generation_prompt=True))[
        "input_ids"
    ]
    ids = torch.tensor(tok(processor.apply_chat_template(messages))["input_ids"])
    segment = torch.zeros(len(ids), dtype=torch.int8)
    segment[len(prompt) : len(ids) - 1] = 2
    position_ids, delta = mrope_position_ids(ids, None, 2, processor.image_token_id)
    return ChatProcessorOutput(
        input_ids=ids, labels=torch.where(segment > 0, ids, -100), segment=segment,
        mm_token_type_ids=torch.zeros(len(ids), dtype=torch.int32), position_ids=position_ids,
        rope_delta=delta, pixel_values=torch.zeros(0, 1176),
        image_grid_thw=torch.zeros(0, 3, dtype=torch.long), gt_boxes=torch.zeros(0, 4),
        gt_descs=(), prompt_end=len(prompt), student_wh=(0, 0),
    )  # fmt: skip


def with_new_answer(sample: ChatProcessorOutput) -> ChatProcessorOutput:
    """The same sample with every student-answer token (not its <|im_end|>) replaced."""
    ids = sample.input_ids.clone()
    answer = torch.nonzero(sample.segment == 2).flatten()[:-1]
    ids[answer] = (ids[answer] + 1000) % 150000
    return replace(sample, input_ids=ids, labels=torch.where(sample.segment > 0, ids, -100))


def build_model(processor, attn: str = "sdpa", **kwargs) -> BBUModel:
    qwen = load_model("tiny", seed=0, attn_implementation=attn)
    torch.manual_seed(0)
    vocab = build_caption_vocab(processor.tokenizer, DESCS)
    return BBUModel.from_qwen(qwen, caption_vocab=vocab, **HEAD, **kwargs).eval()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, processor) -> BBUModel:
    return build_model(processor, request.param)


def run(model: BBUModel, batch: dict):
    with torch.no_grad():
        return model(batch)


def standard(*samples):
    return StandardDataCollator(PAD)(list(samples))


def packed(*samples):
    return PackedDataCollator()(list(samples))


def head_tensors(out, row: int) -> dict[str, torch.Tensor]:
    """Everything the head returns for one of its rows, padding queries dropped."""
    h = out.head
    n = int(h.query_mask[row].sum())
    tensors = {f"logits{k}": x[row, :n] for k, x in enumerate(h.logits)}
    tensors.update({f"boxes{k}": x[row, :n] for k, x in enumerate(h.boxes)})
    tensors["hidden"] = h.hidden[row, :n]
    tensors["token_logits"] = h.token_logits[row, : int(h.token_mask[row].sum())]
    return tensors


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def student_turn_positions(sample: ChatProcessorOutput, image_token_id: int) -> torch.Tensor:
    """The documented language memory, recomputed here: from the last <|im_start|> before the
    student's image up to prompt_end, without the student's image pads."""
    ids = sample.input_ids
    pads = torch.nonzero(ids == image_token_id).flatten()
    last_run_end = int(pads[-1]) + 1
    run_len = int(sample.image_grid_thw[-1].prod()) // 4
    run_start = last_run_end - run_len
    im_starts = torch.nonzero(ids[:run_start] == 151644).flatten()
    turn = int(im_starts[-1])
    return torch.cat((torch.arange(turn, run_start), torch.arange(last_run_end, sample.prompt_end)))


# ---- shapes ------------------------------------------------------------------------------------


def test_standard_batch_shapes(model, samples) -> None:
    one, two = samples["one"], samples["two"]
    batch = standard(one, two)
    out = run(model, batch)
    width = max(one.length, two.length)
    assert out.hidden_states.shape == (2, width, 128)
    assert out.head_samples.tolist() == [0, 1]
    # a.png 56x84 -> merged grid 3x2; b.png 112x56 -> 2x4 (the teacher t.png is not there).
    assert out.grid_hw.tolist() == [[3, 2], [2, 4]]
    assert out.vision_memory.shape == (2, 8, 128)
    assert out.vision_mask.sum(1).tolist() == [6, 8]
    assert out.text_memory.shape[0] == 2 and out.text_mask.shape == out.text_memory.shape[:2]
    h = out.head
    assert len(h.logits) == len(h.boxes) == HEAD["layers"]
    assert h.pred_logits.shape == (2, 8) and h.pred_boxes.shape == (2, 8, 4)
    assert h.query_mask.sum(1).tolist() == [6, 8]
    assert bool(((h.pred_boxes >= 0) & (h.pred_boxes <= 1)).all())


def test_packed_batch_shapes_skip_text_only_samples(model, samples, processor) -> None:
    bin_ = [samples["one"], text_only_sample(processor), samples["two"]]
    out = run(model, packed(*bin_))
    assert out.hidden_states.shape == (1, sum(s.length for s in bin_), 128)
    assert out.head_samples.tolist() == [0, 2]
    assert out.grid_hw.tolist() == [[3, 2], [2, 4]]
    assert out.head.pred_boxes.shape == (2, 8, 4)


def test_batch_without_images_has_no_head_output(model, processor) -> None:
    out = run(model, packed(text_only_sample(processor)))
    assert out.head is None and out.head_samples.numel() == 0


# ---- what the memory is made of --------------------------------------------------------------


def test_vision_memory_is_the_student_images_merger_output(model, samples) -> None:
    two = samples["two"]
    out = run(model, standard(samples["one"], two))
    # The student image alone through the public vision API: its patches are the last ones.
    patches = int(two.image_grid_thw[-1].prod())
    with torch.no_grad():
        alone = model.qwen.model.get_image_features(
            two.pixel_values[-patches:], two.image_grid_thw[-1:], return_dict=True
        ).pooler_output[0]
    assert alone.shape == (8, 128)
    assert (out.vision_memory[1, :8] - alone).abs().max() <= 1e-5
    assert bool((out.vision_memory[0, 6:] == 0).all())  # padding


def test_text_memory_is_the_student_turn(model, samples, processor) -> None:
    one, two = samples["one"], samples["two"]
    batch = standard(one, two)
    out = run(model, batch)
    for row, sample in enumerate((one, two)):
        positions = student_turn_positions(sample, processor.image_token_id)
        n = int(out.text_mask[row].sum())
        assert n == len(positions)
        assert torch.equal(out.text_memory[row, :n], out.hidden_states[row, positions])
        text = processor.tokenizer.decode(sample.input_ids[positions])
        assert text == (
            "<|im_start|>user\n<|vision_start|><|vision_end|>Detect.<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert int(positions.max()) < sample.prompt_end


def test_text_layer_picks_an_inner_decoder_layer(processor, samples) -> None:
    model = build_model(processor, text_layer=1)
    one = samples["one"]
    batch = standard(one)
    out = run(model, batch)
    with torch.no_grad():
        reference = model.qwen.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"], pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"], output_hidden_states=True, use_cache=False,
        ).hidden_states[1]  # fmt: skip
    positions = student_turn_positions(one, processor.image_token_id)
    assert (out.text_memory[0] - reference[0, positions]).abs().max() <= 1e-5
    # ... and the LM still gets the final hidden states.
    assert (
        out.hidden_states - run(build_model(processor), batch).hidden_states
    ).abs().max() <= 1e-5


def test_vision_source_llm_reads_the_hidden_states_at_the_student_image(processor, samples) -> None:
    model = build_model(processor, vision_source="llm")
    one, two = samples["one"], samples["two"]
    for batch, rows in ((standard(one, two), (0, 1)), (packed(one, two), (0, 0))):
        out = run(model, batch)
        flat = out.hidden_states.reshape(-1, out.hidden_states.shape[-1])
        offset = 0
        for head_row, (row, sample) in enumerate(zip(rows, (one, two), strict=True)):
            # The student's image: the last run of image pads in its own tokens.
            pads = torch.nonzero(sample.input_ids == processor.image_token_id).flatten()
            run_len = int(sample.image_grid_thw[-1].prod()) // 4
            start = (row * batch["input_ids"].shape[1] if "cu_seqlens" not in batch else offset)
            positions = start + pads[-run_len:]
            assert int(out.vision_mask[head_row].sum()) == run_len
            assert torch.equal(out.vision_memory[head_row, :run_len], flat[positions])
            offset += len(sample.input_ids)
    # ... and they differ from the merger's tokens the default model reads.
    merger = run(build_model(processor), standard(one)).vision_memory
    assert (run(model, standard(one)).vision_memory - merger).abs().max() > 1e-3


def test_invalid_configs_are_refused(processor) -> None:
    qwen = load_model("tiny", seed=0)
    with pytest.raises(ConfigError, match="text_layer"):
        BBUModel.from_qwen(qwen, text_layer=3)
    with pytest.raises(ConfigError, match="text_layer"):
        BBUModel.from_qwen(qwen, text_layer=0)
    with pytest.raises(ConfigError, match="llm_hidden"):
        BBUModel(qwen, HeadConfig(llm_hidden=64))
    with pytest.raises(ConfigError, match="vision_source"):
        BBUModel.from_qwen(qwen, vision_source="vit")
    vocab = build_caption_vocab(processor.tokenizer, DESCS)
    with pytest.raises(ConfigError, match="caption_vocab_size"):
        BBUModel(qwen, HeadConfig(llm_hidden=128), caption_vocab=vocab)


def test_images_that_do_not_match_the_tokens_are_refused(model, samples) -> None:
    batch = standard(samples["one"], samples["two"])
    batch["image_grid_thw"] = batch["image_grid_thw"][[0, 2, 1]]
    with pytest.raises(ValueError, match="image-token runs"):
        run(model, batch)


# ---- what never reaches the head -------------------------------------------------------------


def test_teacher_pixels_do_not_reach_the_vision_memory(model, samples) -> None:
    base = run(model, standard(samples["one"], samples["two"]))
    other = run(model, standard(samples["one"], samples["two_t2"]))
    assert torch.equal(base.vision_memory, other.vision_memory)
    # The teacher does reach the prompt's hidden states (the LM attends to it): the test can see.
    assert (base.text_memory[1] - other.text_memory[1]).abs().max() > 1e-3


@pytest.mark.parametrize("collate", [standard, packed])
def test_answer_tokens_never_reach_the_head(model, samples, collate) -> None:
    one, two = samples["one"], samples["two"]
    base = run(model, collate(one, two))
    changed = run(model, collate(with_new_answer(one), with_new_answer(two)))
    for row in (0, 1):
        assert max_diff(head_tensors(base, row), head_tensors(changed, row)) == 0.0
    # The LM does see the new answers.
    assert (base.hidden_states - changed.hidden_states).abs().max() > 1e-2


def test_answer_of_another_length_never_reaches_the_head(model, samples) -> None:
    base = run(model, packed(samples["one"], samples["two"]))
    other = samples["two_other_answer"]
    assert other.length != samples["two"].length
    changed = run(model, packed(samples["one"], other))
    for row in (0, 1):
        assert max_diff(head_tensors(base, row), head_tensors(changed, row)) <= 1e-6


def test_packed_samples_do_not_see_each_other(model, samples) -> None:
    base = run(model, packed(samples["one"], samples["two"]))
    changed = run(model, packed(samples["one_a2"], samples["two"]))
    assert max_diff(head_tensors(base, 0), head_tensors(changed, 0)) > 1e-3
    assert max_diff(head_tensors(base, 1), head_tensors(changed, 1)) <= 1e-6


def test_packed_head_outputs_equal_standard(model, samples, processor) -> None:
    bin_ = [samples["one"], samples["two"], samples["two_t2"]]
    pk = run(model, packed(*bin_))
    st = run(model, standard(*bin_))
    for row in range(3):
        assert max_diff(head_tensors(pk, row), head_tensors(st, row)) <= 1e-4
    starts = packed(*bin_)["cu_seqlens"].tolist()
    for row, sample in enumerate(bin_):
        piece = pk.hidden_states[0, starts[row] : starts[row + 1]]
        assert (piece - st.hidden_states[row, : sample.length]).abs().max() <= 1e-4


def test_left_padding_gives_the_same_head_outputs(model, samples) -> None:
    bin_ = [samples["one"], samples["two"]]
    right = run(model, standard(*bin_))
    left = run(model, StandardDataCollator(PAD, padding_side="left")(bin_))
    for row in range(2):
        assert max_diff(head_tensors(right, row), head_tensors(left, row)) <= 1e-4


@pytest.mark.parametrize("reentrant", [False, True])
def test_inner_layer_memory_trains_the_llm_under_checkpointing(
    processor, samples, reentrant
) -> None:
    model = build_model(processor, text_layer=1).train()
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": reentrant}
    )
    out = model(standard(samples["one"]))
    out.head.pred_logits.sum().backward()
    layer0 = model.qwen.model.language_model.layers[0].mlp.down_proj.weight
    assert layer0.grad is not None and float(layer0.grad.abs().sum()) > 0


def test_packed_rows_hand_their_boundaries_to_flash_attention(processor, samples) -> None:
    """flash-attn cannot run here: a probe registered as a flash-attention implementation checks
    that the packed row's cu_seqlens reach the attention function, then computes with sdpa."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    seen = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        seen.append((kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("bbu_flash_probe", probe)
    AttentionMaskInterface.register("bbu_flash_probe", sdpa_mask)
    model = build_model(processor)
    model.qwen.set_attn_implementation({"text_config": "bbu_flash_probe"})
    batch = packed(samples["one"], samples["two"])
    run(model, batch)
    assert len(seen) == model.num_layers
    lengths = [samples["one"].length, samples["two"].length]
    for cu, longest in seen:
        assert cu.dtype == torch.int32 and torch.equal(cu, batch["cu_seqlens"])
        assert longest == max(lengths)
    seen.clear()
    run(model, standard(samples["one"], samples["two"]))  # padded rows: the mask says it all
    assert all(cu is None for cu, _ in seen)


def test_pixel_stem_reads_the_student_image(processor, samples, root) -> None:
    """The head's pixels are the student image (not its teacher), in padded and packed batches:
    the head called by hand on the student files' own processor output gives the same boxes."""
    model = build_model(processor, stem_width=8, roi_grid=2)
    one, two = samples["one"], samples["two"]

    def head_on(names):
        images = [Image.open(root / name).convert("RGB") for name in names]
        pix = processor.image_processor(images=images, return_tensors="pt")
        return student_pixels(
            pix["pixel_values"], pix["image_grid_thw"], [0, 1], patch_size=14, merge_size=2,
            temporal_patch_size=2,
        )  # fmt: skip

    for batch in (standard(one, two), packed(one, two)):
        out = run(model, batch)
        memory = (out.vision_memory, out.vision_mask, out.grid_hw, out.text_memory, out.text_mask)
        for names, same in ((("a.png", "b.png"), True), (("a.png", "t.png"), False)):
            pixels, sizes = head_on(names)
            with torch.no_grad():
                by_hand = model.head(*memory, pixels=pixels, pixel_hw=sizes)
            diff = max(float((x - y).abs().max()) for x, y in zip(out.head.logits, by_hand.logits, strict=True))
            assert (diff <= 1e-5) == same, (names, diff)
