"""Fine-tuning examples as model batches (the loop's `BatchSource`s).

Sentences are tokenised once, when the source is built (the reference pads every sentence
to 20 tokens, [CLS] and [SEP] included); images are read from the feature store per batch
through the shared `read_visual`, features in the store's dtype (float16): the CPU gathers
bytes, the model converts them on the device (pipeline/inputs/visual.py). A source holds
arrays and the store's path only, so it pickles cheaply to DataLoader workers and Dask
ranks; the store opens lazily in each process.

Language-only runs (the text-only baseline) replace every image by one all-zero region with
an all-zero box: the cross-modality layers then see a constant, exactly as if every region's
feature and box were zeroed (identical regions give identical attention results whatever
their number), and no count of regions leaks through a padding mask.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from model.modeling_lxmert import IGNORE_INDEX
from pipeline.finetune.splits import PairExample, QuestionExample
from pipeline.inputs import read_visual
from pipeline.inputs.batch_memory import batch_tensors

TARGET_KINDS = ("soft", "index")


class _TokenisedExamples:
    """Token ids of every example's sentence, the feature store, language-only switch."""

    def __init__(self, sentences: Sequence[str], tokenizer, store, language_only: bool):
        """`store`: a feature store's path (opened lazily in each process) or an open store
        (e.g. a `MemoryStore` of images extracted on the spot)."""
        encoded = tokenizer.encode_batch(list(sentences))
        self.input_ids = encoded.input_ids.astype(np.int32)   # half the memory of int64 on big splits
        self.pad_id = tokenizer.pad_id
        opened = hasattr(store, "get_many")
        self.store_path = None if opened else str(store)
        self.language_only = language_only
        self._store = store if opened else None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None if self.store_path else self._store}

    @property
    def store(self):
        if self._store is None:
            from pipeline.features import FeatureStore
            self._store = FeatureStore(self.store_path)
        return self._store

    def text_inputs(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        ids = self.input_ids[indices].astype(np.int64)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).astype(np.int64),
                "token_type_ids": np.zeros_like(ids)}

    def visual_inputs(self, image_ids: list[str]) -> dict[str, np.ndarray | torch.Tensor]:
        """(len(image_ids), N, D) features (the store's dtype) and boxes, and a box mask when
        boxes were padded."""
        if self.language_only:
            n = len(image_ids)
            dim = self.store.metadata.feature_dim
            return {"visual_feats": np.zeros((n, 1, dim), np.float32), "visual_pos": np.zeros((n, 1, 4), np.float32)}
        visual = read_visual(self.store, image_ids, dtype=None)
        inputs = {"visual_feats": visual.feature_tensor, "visual_pos": visual.boxes}
        if visual.padded:   # only padding needs a visual mask (the reference's 36 boxes never do)
            inputs["visual_attention_mask"] = visual.mask
        return inputs


class QuestionBatches(_TokenisedExamples):
    """VQA/GQA: one image per question; targets are soft scores over the answer vocabulary
    (BCE) or the best-scoring answer's index (CE; IGNORE_INDEX when no answer is in the
    vocabulary), or none (prediction)."""

    def __init__(self, examples: Sequence[QuestionExample], tokenizer, store: str, *, answers: Sequence[str],
                 targets: str | None, language_only: bool = False):
        super().__init__([e.sentence for e in examples], tokenizer, store, language_only)
        if targets is not None and targets not in TARGET_KINDS:
            raise ValueError(f"targets must be one of {TARGET_KINDS} or None, got {targets!r}")
        self.image_ids = [e.image_id for e in examples]
        self.num_answers = len(answers)
        self.targets = targets
        index = {a: i for i, a in enumerate(answers)}
        # sparse soft targets: per example the (answer index, score) pairs in the vocabulary
        self.target_rows: list[np.ndarray] = []
        self.target_scores: list[np.ndarray] = []
        for e in examples:
            known = [(index[a], s) for a, s in e.scores.items() if a in index]
            self.target_rows.append(np.array([i for i, _ in known], np.int64))
            self.target_scores.append(np.array([s for _, s in known], np.float32))

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
        batch = self.text_inputs(indices)
        batch.update(self.visual_inputs([self.image_ids[i] for i in indices]))
        if self.targets == "soft":
            labels = np.zeros((len(indices), self.num_answers), np.float32)
            for row, i in enumerate(indices):
                labels[row, self.target_rows[i]] = self.target_scores[i]
            batch["labels"] = labels
        elif self.targets == "index":
            labels = np.full(len(indices), IGNORE_INDEX, np.int64)
            for row, i in enumerate(indices):
                if len(self.target_scores[i]):
                    labels[row] = self.target_rows[i][int(np.argmax(self.target_scores[i]))]
            batch["labels"] = labels
        return batch_tensors(batch)   # in a DataLoader worker: one shared block, sent as it is


class PairBatches(_TokenisedExamples):
    """NLVR2: the statement with both images, visual inputs (B, 2, N, ...) ordered
    [left, right] per example; labels 1 = True, 0 = False."""

    def __init__(self, examples: Sequence[PairExample], tokenizer, store: str, *, labelled: bool,
                 language_only: bool = False):
        super().__init__([e.sentence for e in examples], tokenizer, store, language_only)
        self.pairs = [e.image_ids for e in examples]
        self.labels = np.array([IGNORE_INDEX if e.label is None else e.label for e in examples], np.int64)
        self.labelled = labelled

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
        batch = self.text_inputs(indices)
        interleaved = [image_id for i in indices for image_id in self.pairs[i]]
        visual = self.visual_inputs(interleaved)
        b = len(indices)
        batch.update({k: v.reshape(b, 2, *v.shape[1:]) for k, v in visual.items()})
        if self.labelled:
            batch["labels"] = self.labels[indices]
        return batch_tensors(batch)
