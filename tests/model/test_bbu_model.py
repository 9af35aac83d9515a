"""BBUModel on the tiny Qwen2.5-VL: shapes of padded and packed batches, what the head's memory is
made of (the student image's merger tokens, the student turn's hidden states, the student's pixels)
and the configurations it refuses. What never reaches the head: test_bbu_isolation.py."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from bbucli.errors import ConfigError
from bbucli.loss.multitask import build_caption_vocab
from bbucli.model.bbu_model import BBUModel
from bbucli.model.head import HeadConfig
from bbucli.model.loading import load_model
from bbucli.model.pixel_stem import student_pixels
from tests.model.bbu_batches import (
    DESCS,
    HEAD,
    build_model,
    packed,
    run,
    standard,
    student_turn_positions,
    text_only_sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            output_hidden_states=True,
            use_cache=False,
        ).hidden_states[1]
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



def test_pixel_stem_reads_the_student_image(processor, samples, root) -> None:
    """The head's pixels are the student image (not its teacher), in padded and packed batches:
    the head called by hand on the student files' own processor output gives the same boxes."""
    model = build_model(processor, stem_width=8, roi_grid=2)
    one, two = samples["one"], samples["two"]

    def head_on(names):
        images = [Image.open(root / name).convert("RGB") for name in names]
        pix = processor.image_processor(images=images, return_tensors="pt")
        return student_pixels(
            pix["pixel_values"],
            pix["image_grid_thw"],
            [0, 1],
            patch_size=14,
            merge_size=2,
            temporal_patch_size=2,
        )

    for batch in (standard(one, two), packed(one, two)):
        out = run(model, batch)
        memory = (out.vision_memory, out.vision_mask, out.grid_hw, out.text_memory, out.text_mask)
        for names, same in ((("a.png", "b.png"), True), (("a.png", "t.png"), False)):
            pixels, sizes = head_on(names)
            with torch.no_grad():
                by_hand = model.head(*memory, pixels=pixels, pixel_hw=sizes)
            diff = max(float((x - y).abs().max()) for x, y in zip(out.head.logits, by_hand.logits, strict=True))
            assert (diff <= 1e-5) == same, (names, diff)
