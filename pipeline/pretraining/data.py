"""`PretrainingData`: the `BatchSource` of pretraining (examples of the run + regions of the store).

`make_batch(indices, rng, epoch)` applies the rules of docs/reference/lxmert.md §1.6 to a whole
batch, drawing every random number from `rng` (the loop seeds it per batch, so a batch is the
same in any process, worker or resumed run), in this order:

1. cross-modality matching: with p = `mismatch_rate` a row takes the sentence of a random
   example of another image (only when the matched task is on, as in the reference). In the
   grounding warm-up instead (and for a `grounding_rate` share of the rows after it), a row's
   sentence is about its own image's detections: a statement whose truth is the matching
   label, or (the other half) a question (grounding.py);
2. masked LM on every WordPiece of the (possibly swapped) sentence;
3. masked objects on the real boxes (80% zeroed / 10% another image's RoI / 10% kept):
   drawn here, applied by `model_batch` on the device (below);
4. the QA answer, sampled by soft score, for matched rows with a label (from `qa_from_epoch`);
   for a grounding row, the answer to its question.

The batch (torch tensors; B rows, N boxes, D feature dims, T = 20 tokens):

    input_ids, attention_mask, token_type_ids, labels   (B, T) int64   masked LM
    matched_label, ans, source                          (B,) int64
    visual_feats    (B, N, D) the store's dtype (float16), the features as stored, NOT masked
    visual_pos      (B, N, 4) float32;  visual_attention_mask (B, N) float32, only when padded
    obj_ids, attr_ids (B, N) int64;  obj_conf, attr_conf (B, N) float32
    feat_mask       (B, N) float32  the masked boxes (the visual losses' weights)
    feat_zero       (K0,) int64     masked boxes whose feature becomes 0, as flat box positions
                                    (image * N + box)
    feat_swap       (2, K1) int64   flat box positions: box [0, k] takes the feature of [1, k]
    answer_scores   (B, answers) float32, validation only

`model_batch(batch)`, called by the job's forward once the batch is on the device, applies
the masks: `visual_feats` becomes the masked copy and `feat_targets` (the feature regression
target) is the shipped tensor itself. The float16 features cross to the device once, and the
CPU never converts or copies them (docs/scale.md: that was most of the loader's CPU). The
masked features, converted to float32 by the model, are bit for bit those the reference's
CPU masking gives (tests/test_pretrain_data.py).

Pickling carries paths only: each process memory-maps the examples and the store itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.inputs.batch_memory import batch_tensors
from pipeline.inputs.visual import read_visual
from pipeline.pretraining.examples import ExampleTable
from pipeline.pretraining.grounding import load_questions, sample_presence
from pipeline.pretraining.masking import (IGNORE, ObjectMasks, apply_object_masks, draw_object_masks,
                                          mask_tokens, mismatch, sample_answers)
from pipeline.pretraining.options import PretrainOptions


class PretrainingData:
    def __init__(self, examples_dir: str, features_dir: str, options: PretrainOptions, *, vocab_size: int,
                 special_ids: dict[str, int], num_answers: int, answer_scores: bool = False):
        self.examples_dir, self.features_dir = str(examples_dir), str(features_dir)
        self.options = options
        self.vocab_size = vocab_size
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = (special_ids[k] for k in ("pad", "cls", "sep", "mask"))
        self.num_answers = num_answers
        # validation also returns every row's answer -> score table, for the QA accuracy
        self.answer_scores = answer_scores
        self._table: ExampleTable | None = None
        self._store = None
        self._grounding: tuple[np.ndarray, np.ndarray, dict[str, int]] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None, "_store": None, "_grounding": None}

    @property
    def table(self) -> ExampleTable:
        if self._table is None:
            self._table = ExampleTable.load(self.examples_dir)
        return self._table

    @property
    def store(self):
        if self._store is None:
            from pipeline.features import FeatureStore
            self._store = FeatureStore(self.features_dir)
        return self._store

    def __len__(self) -> int:
        return len(self.table)

    @property
    def grounding(self) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """The warm-up's question and statement token ids per label, the answer ids of yes / no."""
        if self._grounding is None:
            self._grounding = load_questions(self.examples_dir)
        return self._grounding

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
        t, opts = self.table, self.options
        rows = np.asarray(indices, np.int64)
        images = t.image_index[rows].astype(np.int64)

        visual = read_visual(self.store, [t.image_ids[i] for i in images], dtype=None)
        # grounding rows: every row in the warm-up, a `grounding_rate` share of each batch after it
        if epoch < opts.grounding_warmup_epochs:
            grounded = np.ones(len(rows), bool)
        elif opts.grounding_rate:
            grounded = rng.random(len(rows)) < opts.grounding_rate
        else:
            grounded = np.zeros(len(rows), bool)
        if "matched" in opts.tasks and not grounded.all():
            swapped_from, matched = mismatch(images, rng, pool_images=t.image_index, rate=opts.mismatch_rate)
            ids = t.input_ids[np.where(swapped_from >= 0, swapped_from, rows)].astype(np.int64)
        else:
            matched, ids = np.ones(len(rows), np.int64), t.input_ids[rows].astype(np.int64)
        if grounded.any():
            questions, statements, answer_ids = self.grounding
            asked, yes = sample_presence(visual.objects_id[grounded], visual.objects_conf[grounded], rng,
                                         num_labels=len(questions), min_conf=opts.grounding_min_conf)
            # half the rows state it (the matching head's target), half ask it (the QA head's)
            stated = (rng.random(len(asked)) < 0.5) & ("matched" in opts.tasks)
            matched[grounded] = np.where(stated & (yes >= 0), yes, IGNORE)
            ids[grounded] = np.where(stated[:, None], statements[asked], questions[asked])
            grounding_ans = np.where(stated | (yes < 0), IGNORE,
                                     np.where(yes == 1, answer_ids["yes"], answer_ids["no"]))
        attention_mask = (ids != self.pad_id).astype(np.int64)

        if "mlm" in opts.tasks:
            maskable = (ids != self.pad_id) & (ids != self.cls_id) & (ids != self.sep_id)
            input_ids, mlm_labels = mask_tokens(ids, maskable, rng, vocab_size=self.vocab_size,
                                                mask_id=self.mask_id, rate=opts.word_mask_rate)
        else:
            input_ids, mlm_labels = ids, np.full_like(ids, IGNORE)

        if {"obj", "attr", "feat"} & set(opts.tasks):
            objects = draw_object_masks(visual.mask > 0, rng, rate=opts.obj_mask_rate)
        else:
            objects = ObjectMasks.none(*visual.mask.shape)

        labels = t.labels(rows)
        if "qa" in opts.tasks and epoch >= opts.qa_from_epoch and not grounded.all():
            ans = sample_answers(labels, matched, rng)
        else:
            ans = np.full(len(rows), IGNORE, np.int64)
        if grounded.any():
            ans[grounded] = grounding_ans
        batch = {
            "input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(ids),
            "visual_feats": visual.feature_tensor, "visual_pos": visual.boxes,
            "labels": mlm_labels, "matched_label": matched, "ans": ans,
            "obj_ids": visual.objects_id, "obj_conf": visual.objects_conf,
            "attr_ids": visual.attrs_id, "attr_conf": visual.attrs_conf,
            "feat_mask": objects.chosen.astype(np.float32), "feat_zero": objects.zero, "feat_swap": objects.swap,
            "source": t.source[rows].astype(np.int64),
        }
        if visual.padded:   # only padding needs a visual mask (the reference's 36 boxes never do)
            batch["visual_attention_mask"] = visual.mask
        if self.answer_scores:
            scores = np.zeros((len(rows), self.num_answers), np.float32)
            for i, label in enumerate(labels):
                for a, s in (label or {}).items():
                    scores[i, a] = s
            batch["answer_scores"] = scores
        return batch_tensors(batch)   # in a DataLoader worker: one shared block, sent as it is


def model_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the model takes it: the object masks applied to `visual_feats` where the
    batch now is (the device), `feat_targets` the unmasked features (the same tensor, not a
    copy), `feat_zero` / `feat_swap` spent. A batch already in this form is returned as is."""
    if "feat_swap" not in batch:
        return batch
    out = {k: v for k, v in batch.items() if k not in ("feat_zero", "feat_swap")}
    out["visual_feats"] = apply_object_masks(batch["visual_feats"], batch["feat_zero"], batch["feat_swap"])
    out["feat_targets"] = batch["visual_feats"]
    return out
