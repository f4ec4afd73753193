"""Pictures: drawn regions, training curves, cross-attention maps."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from model import LxmertConfig, LxmertForQuestionAnswering
from model.tokenizer import train_wordpiece
from pipeline.finetune.splits import QuestionExample
from pipeline.pictures import cross_attention_map, draw_attention, draw_regions, plot_training_curves
from tests.helpers.feature_data import make_image, make_store
from workflows.demo_pictures import pick_shown_question


def _pixels(path) -> np.ndarray:
    """The picture as (H, W, 3) ints; it must be a PNG."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _count(pixels: np.ndarray, rgba, tolerance: int = 12) -> int:
    """How many pixels have the colour `rgba` (matplotlib's 0..1 floats)."""
    target = np.array(rgba[:3]) * 255
    return int((np.abs(pixels - target).max(-1) < tolerance).sum())


def test_regions_drawn_on_their_image(tmp_path):
    regions = make_image(0, num_boxes=12, dim=8, num_objects=3, num_attributes=2)
    image = np.full((regions.height, regions.width, 3), 200, np.uint8)
    out = draw_regions(image, regions, ["circle", "square", "star"], ["red", "blue"], tmp_path / "p" / "d.png")
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["d.png"]
    pixels = _pixels(out)
    # the image keeps its shape (the axes are off, so the picture is the image)
    assert pixels.shape[1] / pixels.shape[0] == pytest.approx(regions.width / regions.height, rel=0.1)
    # the 8 most confident of the 12 regions, one tab10 colour per rank, and no more
    tab10 = matplotlib.colormaps["tab10"]
    assert all(_count(pixels, tab10(rank)) > 100 for rank in range(8))
    assert _count(pixels, tab10(8)) == 0 and _count(pixels, tab10(9)) == 0


def test_training_curves_one_panel_per_loss(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        run = tmp_path / name
        run.mkdir()
        lines = [{"step": s, "epoch": s / 10, "lr": 1e-4, "loss": scale / s, "mlm": 0.5 / s} for s in range(1, 20)]
        lines.append({"step": 19, "epoch": 1.9, "split": "val", "loss": scale / 10})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    pixels = _pixels(plot_training_curves({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "curves.png"))
    # two panels side by side ("loss", "mlm"; step/epoch/lr are not losses): 8.4 x 3.0 inches
    assert 2.4 < pixels.shape[1] / pixels.shape[0] < 3.4
    tab10 = matplotlib.colormaps["tab10"]
    assert _count(pixels, tab10(0)) > 100 and _count(pixels, tab10(1)) > 100     # a line for each run
    with pytest.raises(ValueError, match="no metrics"):
        plot_training_curves({"empty": tmp_path / "nowhere"}, tmp_path / "x.png")


def test_cross_attention_rows_are_distributions_over_the_real_regions(tmp_path):
    tokenizer = train_wordpiece(["what color is the circle", "is there a red star"] * 10)
    config = LxmertConfig.preset("tiny", vocab_size=tokenizer.vocab_size, visual_feat_dim=8)
    torch.manual_seed(0)
    model = LxmertForQuestionAnswering(config).eval()
    feats = torch.rand(1, 6, 8)
    boxes = torch.rand(1, 6, 4).sort(-1).values
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.float32)   # two padded regions
    amap = cross_attention_map(model, tokenizer, "what color is the circle",
                               {"visual_feats": feats, "visual_pos": boxes, "visual_attention_mask": mask})
    assert amap.tokens[0] == "[CLS]" and amap.tokens[-1] == "[SEP]" and "circle" in amap.tokens
    assert amap.weights.shape == (len(amap.tokens), 4) and amap.layer == config.x_layers - 1
    np.testing.assert_allclose(amap.weights.sum(1), 1.0, atol=1e-5)   # padding got no attention
    # the same numbers as the model's own attention output
    text = tokenizer.encode_batch(["what color is the circle"]).to_torch()
    out = model(text["input_ids"], feats, boxes, text["attention_mask"], mask, output_attentions=True)
    expected = out.encoder_output.cross_encoder_attentions[-1][0].mean(0)[:len(amap.tokens), :4]
    np.testing.assert_allclose(amap.weights, expected.detach().numpy(), atol=1e-6)
    image = np.zeros((120, 160, 3), np.uint8)
    pixel_boxes = boxes[0, :4].numpy() * [160, 120, 160, 120]
    pixels = _pixels(draw_attention(image, pixel_boxes, amap, tmp_path / "att.png", top=3, title="q"))
    # the most attended region is framed in autumn's red on the black image, and the word x
    # region matrix spans viridis from its darkest to its brightest cell
    assert _count(pixels, (1.0, 0.0, 0.0)) > 100
    viridis = matplotlib.colormaps["viridis"]
    assert _count(pixels, viridis(0.0), tolerance=8) > 500 and _count(pixels, viridis(1.0), tolerance=8) > 500


def test_the_demo_shows_the_question_whose_object_was_detected_most_confidently(tmp_path):
    objects = ["circle", "square", "star"]
    images = []
    for i, (obj, conf) in enumerate([(0, 0.3), (1, 0.95), (1, 0.5), (2, 0.99)]):
        im = make_image(i, num_boxes=4, dim=8, num_objects=3)
        im.objects_id[:] = [obj, 2, 2, 2] if obj != 2 else [2, 0, 0, 0]
        im.objects_conf[:] = [conf, 0.1, 0.1, 0.1]
        images.append(im)
    store = make_store(tmp_path / "store", images)
    questions = [QuestionExample(1, "img000000", "What color is the circle?"),
                 QuestionExample(2, "img000001", "Is there a square?"),           # not a colour question
                 QuestionExample(3, "img000002", "What color is the square?"),
                 QuestionExample(4, "img000001", "What color is the square?"),
                 QuestionExample(5, "img000003", "What color is the circle?")]     # its circles: 0.1
    assert pick_shown_question(questions, store, objects).question_id == 4
    assert pick_shown_question(questions[:2], store, objects).question_id == 1
    # no colour question names a detected object: the first question
    assert pick_shown_question([questions[1]], store, objects).question_id == 2
    assert pick_shown_question([], store, objects) is None
