"""One question about one image (or one statement about a pair) with a fine-tuned run: the
top answers with their probabilities, and where the words looked.

The images come as regions (`ImageFeatures`), e.g. extracted on the spot by `predict`; they
go through the run's own batching (so a language-only run blanks them here too) from a
`MemoryStore`. Probabilities follow the head's loss: BCE-trained VQA/GQA heads score each
answer on its own (sigmoid), CE-trained ones and NLVR2 share one softmax.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.features.memory import MemoryStore
from pipeline.features.schema import ImageFeatures, StoreMetadata
from pipeline.finetune.predict import FinetunedRun
from pipeline.finetune.splits import PairExample, QuestionExample
from pipeline.pictures.attention import AttentionMap, cross_attention_maps


@dataclass
class Reply:
    answers: list[tuple[str, float]]      # best first: (answer, probability)
    attention: AttentionMap | None        # words over the first image's regions; None for language-only runs
    layers: list[AttentionMap] | None = None   # the same for every cross layer (attention is the last)


def region_names(regions: ImageFeatures, metadata: StoreMetadata) -> list[str]:
    """'attribute object' for each region, in the detector's vocabulary."""
    from detector.config import DetectorConfig

    cfg = DetectorConfig.from_dict(metadata.detector_config)
    objects, attributes = cfg.object_names(), cfg.attribute_names()
    return [f"{attributes[a]} {objects[o]}" for o, a in zip(regions.objects_id, regions.attrs_id)]


@torch.no_grad()
def ask(run: FinetunedRun, sentence: str, images: Sequence[ImageFeatures], metadata: StoreMetadata, *,
        top: int = 5) -> Reply:
    pair = run.name == "nlvr2"
    if len(images) != (2 if pair else 1):
        raise PipelineError(f"a {run.name} run takes {'two images (left, right)' if pair else 'one image'}, "
                            f"got {len(images)}")
    task = copy.copy(run.task)
    task.store = MemoryStore(images, metadata)
    if pair:
        example = PairExample("asked", sentence, images[0].image_id, images[1].image_id)
    else:
        example = QuestionExample("asked", images[0].image_id, sentence)
    batch = task.batches([example], run.tokenizer, labelled=False).make_batch(np.arange(1), np.random.default_rng(0), 0)
    device = run.model.device
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = task.logits(run.model(**batch))[0].float()
    sigmoid = not pair and task.loss_kind == "bce"
    probs = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, -1)
    names = ["False", "True"] if pair else task.answers
    order = probs.argsort(descending=True)[:top].tolist()
    layers = None
    if not task.language_only:
        first = {k: batch[k][:, 0] if pair else batch[k]
                 for k in ("visual_feats", "visual_pos", "visual_attention_mask") if k in batch}
        first.setdefault("visual_attention_mask", None)
        layers = cross_attention_maps(run.model, run.tokenizer, sentence, first)
    return Reply(answers=[(names[i], float(probs[i])) for i in order], attention=layers[-1] if layers else None,
                 layers=layers)
