"""The pretraining masking rules of docs/reference/lxmert.md §1.6, vectorised over a batch.

All randomness comes from the numpy Generator the training loop passes per batch, so masks
are deterministic for (seed, epoch, batch) and identical in any DataLoader worker.
Random replacement tokens are drawn as integers in [0, vocab_size) (the reference samples
uniformly from the whole vocabulary, specials included) without building any list.

Masked objects are split in two: `draw_object_masks` makes every random decision on the CPU
(which boxes, zeroed or swapped, with which box), `apply_object_masks` applies them to the
features on the device the model runs on, where the float16 features are cheap to copy
(docs/scale.md). `mask_objects` is both on the CPU, as the reference does it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100   # transformers' ignore_index (the reference's -1)


def mask_tokens(input_ids: np.ndarray, maskable: np.ndarray, rng: np.random.Generator, *, vocab_size: int,
                mask_id: int, rate: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """(masked ids, labels): each maskable WordPiece is chosen with p=rate; of those 80% become
    [MASK], 10% a uniformly random vocabulary id, 10% stay. Labels are the original ids at chosen
    positions, IGNORE elsewhere ([CLS], [SEP] and padding are never maskable)."""
    u = rng.random(input_ids.shape)
    chosen = (u < rate) & maskable
    kind = rng.random(input_ids.shape)
    random_ids = rng.integers(0, vocab_size, input_ids.shape)
    out = input_ids.copy()
    out[chosen & (kind < 0.8)] = mask_id
    swap = chosen & (kind >= 0.8) & (kind < 0.9)
    out[swap] = random_ids[swap]
    labels = np.where(chosen, input_ids, IGNORE)
    return out, labels


@dataclass
class ObjectMasks:
    """Which boxes masked-object prediction masks, and how: drawn on the CPU with the batch's
    Generator, applied to the features wherever they are (`apply_object_masks`).

    Boxes are named by their flat position in the batch, `image * N + box`: a few hundred
    integers that apply without a boolean mask (which would make a GPU wait for the host).
    """

    chosen: np.ndarray    # (B, N) bool: the masked boxes (the visual losses' feat_mask)
    zero: np.ndarray      # (K0,) int64: chosen boxes whose feature becomes 0 (80%)
    swap: np.ndarray      # (2, K1) int64: box swap[0, k] takes the feature of box swap[1, k] (10%)

    @classmethod
    def none(cls, b: int, n: int) -> "ObjectMasks":
        return cls(np.zeros((b, n), bool), np.zeros(0, np.int64), np.zeros((2, 0), np.int64))


def draw_object_masks(box_valid: np.ndarray, rng: np.random.Generator, *, rate: float = 0.15) -> ObjectMasks:
    """The masks of a (B, N) batch of boxes: each real box chosen with p=rate; of those 80%
    zeroed, 10% given the feature of a random real box of another batch image, 10% kept.

    The random numbers are drawn in the order the reference's CPU masking drew them
    (`mask_objects` applies these masks to arrays), so batches, their seeds and resumed runs
    are unchanged by where the masks are applied.
    """
    b, n = box_valid.shape
    chosen = (rng.random((b, n)) < rate) & box_valid
    kind = rng.random((b, n))
    zero = np.flatnonzero(chosen & (kind < 0.8))
    swapped = np.flatnonzero(chosen & (kind >= 0.8) & (kind < 0.9))
    sources = np.zeros(len(swapped), np.int64)
    if len(swapped):
        real = np.flatnonzero(box_valid)   # row-major: image i's real boxes are one run of `real`
        per_image = box_valid.sum(1)
        first = np.concatenate([[0], np.cumsum(per_image)])
        for t, i in enumerate(swapped // n):
            if b > 1:
                # the k-th real box of another image, without building that list per swap
                k = int(rng.integers(int(len(real) - per_image[i])))
                sources[t] = real[k if k < first[i] else k + per_image[i]]
            else:
                sources[t] = real[rng.integers(len(real))]
    return ObjectMasks(chosen, zero.astype(np.int64), np.stack([swapped.astype(np.int64), sources]))


def apply_object_masks(features: torch.Tensor, zero: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """The masked copy of (B, N, D) `features` (any dtype, any device; `features` unchanged):
    the boxes at flat positions `zero` zeroed, box swap[0, k] given the feature of swap[1, k].

    Zeroing and copying whole feature rows are exact in every dtype: masked on the device in
    float16 and converted there, the features are bit for bit those of the CPU float32 path.
    Nothing here waits for the device (index tensors, no boolean indexing, no item()).
    """
    d = features.shape[-1]
    out = features.clone(memory_format=torch.contiguous_format)
    flat = out.view(-1, d)
    flat.index_fill_(0, zero, 0)
    flat.index_copy_(0, swap[0], features.reshape(-1, d).index_select(0, swap[1]))
    return out


def mask_objects(features: np.ndarray, box_valid: np.ndarray, rng: np.random.Generator, *,
                 rate: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """(masked features, feat_mask) for a (B, N, D) array: `draw_object_masks` applied on the
    CPU, as the reference does. The training batches apply the same masks on the device
    instead (`pipeline.pretraining.data.model_batch`); this is their reference and the path
    for arrays that never reach a device. Boxes themselves are never masked."""
    masks = draw_object_masks(box_valid, rng, rate=rate)
    out = features.copy()
    d = features.shape[-1]
    out.reshape(-1, d)[masks.zero] = 0
    out.reshape(-1, d)[masks.swap[0]] = features.reshape(-1, d)[masks.swap[1]]
    return out, masks.chosen.astype(np.float32)


def mismatch(image_index: np.ndarray, rng: np.random.Generator, *, pool_images: np.ndarray,
             rate: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Cross-modality matching: (sentence source row in `pool_images`, is_matched).

    Row i keeps its own sentence (source -1) with p = 1 - rate; otherwise it takes the sentence
    of a uniformly random example of `pool_images` (image ids as ints) whose image differs.
    """
    b = len(image_index)
    swap = rng.random(b) < rate
    source = np.full(b, -1, np.int64)
    for i in np.flatnonzero(swap):
        for _ in range(100):   # the reference redraws until the image differs
            j = int(rng.integers(len(pool_images)))
            if pool_images[j] != image_index[i]:
                source[i] = j
                break
    return source, (source < 0).astype(np.int64)


def sample_answers(labels: list[dict[int, float] | None], matched: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """QA target per row: one answer id sampled with probability proportional to its soft score;
    IGNORE for rows without a (non-empty) label or whose sentence was swapped."""
    out = np.full(len(labels), IGNORE, np.int64)
    for i, label in enumerate(labels):
        if not matched[i] or not label:
            continue
        ids = np.fromiter(label.keys(), np.int64)
        scores = np.fromiter(label.values(), np.float64)
        if scores.sum() <= 0:
            continue
        out[i] = ids[rng.choice(len(ids), p=scores / scores.sum())]
    return out
