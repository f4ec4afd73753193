"""The pretraining masking rules of docs/reference/lxmert.md §1.6, vectorised over a batch.

All randomness comes from the numpy Generator the training loop passes per batch, so masks
are deterministic for (seed, epoch, batch) and identical in any DataLoader worker.
Random replacement tokens are drawn as integers in [0, vocab_size) (the reference samples
uniformly from the whole vocabulary, specials included) without building any list.
"""

from __future__ import annotations

import numpy as np

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


def mask_objects(features: np.ndarray, box_valid: np.ndarray, rng: np.random.Generator, *,
                 rate: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """(masked features, feat_mask) for a (B, N, D) batch: each real box chosen with p=rate;
    80% zeroed, 10% replaced by a random real RoI feature of another batch image, 10% kept.
    Boxes themselves are never masked."""
    b, n, _ = features.shape
    chosen = (rng.random((b, n)) < rate) & box_valid
    kind = rng.random((b, n))
    out = features.copy()
    out[chosen & (kind < 0.8)] = 0
    swap = np.argwhere(chosen & (kind >= 0.8) & (kind < 0.9))
    if len(swap):
        real = np.argwhere(box_valid)   # row-major: image i's real boxes are one run of `real`
        per_image = box_valid.sum(1)
        first = np.concatenate([[0], np.cumsum(per_image)])
        for i, j in swap:
            if b > 1:
                # the k-th real box of another image, without building that list per swap
                k = int(rng.integers(int(len(real) - per_image[i])))
                src = real[k if k < first[i] else k + per_image[i]]
            else:
                src = real[rng.integers(len(real))]
            out[i, j] = features[src[0], src[1]]
    return out, chosen.astype(np.float32)


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
