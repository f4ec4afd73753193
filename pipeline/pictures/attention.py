"""Which regions the words of a sentence attend to, in the cross-modality layers.

The map is the language-to-vision attention of one cross layer (the last by default),
averaged over heads: row t = how word t distributes its attention over the regions. The
picture shows the image with the regions most attended by the sentence's words (summed
over words, [CLS]/[SEP] excluded) and the word x region matrix for those regions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.pictures.canvas import pyplot, save_figure


@dataclass
class AttentionMap:
    tokens: list[str]          # the sentence's WordPieces with [CLS] and [SEP]
    weights: np.ndarray        # (T, N) attention of each token over the regions (rows sum to 1)
    layer: int                 # which cross layer (0-based)

    def region_scores(self) -> np.ndarray:
        """(N,) attention the sentence's words pay to each region ([CLS]/[SEP] left out)."""
        words = [i for i, t in enumerate(self.tokens) if t not in ("[CLS]", "[SEP]")] or list(range(len(self.tokens)))
        return self.weights[words].sum(0)


def cross_attention_map(model, tokenizer, sentence: str, visual_inputs: dict, layer: int = -1) -> AttentionMap:
    """`model`: any LXMERT model with an `.lxmert` backbone; `visual_inputs`: one image as
    `VisualBatch.model_inputs()` (batch of 1)."""
    return cross_attention_maps(model, tokenizer, sentence, visual_inputs)[layer]


@torch.no_grad()
def cross_attention_maps(model, tokenizer, sentence: str, visual_inputs: dict) -> list[AttentionMap]:
    """The map of every cross layer, first to last, from one forward pass."""
    encoded = tokenizer.encode_batch([sentence])
    length = int(encoded.attention_mask[0].sum())
    text = {k: v.to(model.device) for k, v in encoded.to_torch().items()}
    visual = {k: (v.to(model.device) if v is not None else None) for k, v in visual_inputs.items()}
    was_training = model.training
    model.eval()
    out = model.lxmert(text["input_ids"], visual["visual_feats"], visual["visual_pos"], text["attention_mask"],
                       visual["visual_attention_mask"], text["token_type_ids"], output_attentions=True)
    model.train(was_training)
    n = visual["visual_feats"].shape[1]
    if visual["visual_attention_mask"] is not None:
        n = int(visual["visual_attention_mask"][0].sum())
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids[0, :length])
    return [AttentionMap(tokens=tokens, weights=layer[0].float().mean(0)[:length, :n].cpu().numpy(), layer=index)
            for index, layer in enumerate(out.cross_encoder_attentions)]


def draw_attention(image: np.ndarray, boxes: np.ndarray, amap: AttentionMap, out: str | os.PathLike, *,
                   top: int = 5, title: str | None = None, region_names: list[str] | None = None) -> Path:
    """Image with the `top` most attended regions (boxes in pixels, numbered by rank) beside
    the word x region attention matrix of those regions."""
    plt = pyplot()
    scores = amap.region_scores()
    order = np.argsort(-scores)[:top]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    left.imshow(image)
    left.set_axis_off()
    cmap = plt.get_cmap("autumn")
    peak = float(scores[order[0]]) if len(order) else 1.0
    for rank, j in enumerate(order):
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        strength = float(scores[j]) / peak if peak > 0 else 0.0
        colour = cmap(1.0 - strength)
        left.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                                     linewidth=1 + 3 * strength))
        left.text(x1 + 2, y1 + 2, str(rank + 1), fontsize=9, va="top", color="white",
                  bbox=dict(facecolor=colour, alpha=0.85, pad=1, edgecolor="none"))
    matrix = amap.weights[:, order]
    right.imshow(matrix, aspect="auto", cmap="viridis")
    right.set_yticks(range(len(amap.tokens)), amap.tokens, fontsize=8)
    names = [f"{rank + 1}" + (f" {region_names[j]}" if region_names else "") for rank, j in enumerate(order)]
    right.set_xticks(range(len(order)), names, fontsize=7, rotation=45, ha="right")
    right.set_title(f"cross layer {amap.layer + 1}: words -> regions", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, out)
