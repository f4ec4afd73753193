import numpy as np
import pytest
import torch

from pipeline.pretraining.masking import (IGNORE, ObjectMasks, apply_object_masks, draw_object_masks, mask_objects,
                                          mask_tokens)


def test_token_masking_rates_labels_and_determinism():
    ids = np.random.default_rng(0).integers(5, 100, (4000, 20))
    maskable = np.ones_like(ids, bool)
    maskable[:, 0] = maskable[:, -1] = False
    out, labels = mask_tokens(ids, maskable, np.random.default_rng(1), vocab_size=100, mask_id=4)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert abs(chosen[maskable].mean() - 0.15) < 0.005
    assert (labels[chosen] == ids[chosen]).all()
    masked = (out == 4) & chosen
    kept = (out == ids) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.02
    assert 0.09 < kept.sum() / chosen.sum() < 0.12       # 10% kept + random ids that hit the same token
    assert (out[~chosen] == ids[~chosen]).all()
    again, _ = mask_tokens(ids, maskable, np.random.default_rng(1), vocab_size=100, mask_id=4)
    assert (again == out).all()


def test_object_masking_rates_and_sources():
    rng = np.random.default_rng(0)
    feats = rng.random((64, 36, 8)).astype(np.float32) + 1
    valid = np.ones((64, 36), bool)
    valid[:, 30:] = False
    out, mask = mask_objects(feats, valid, np.random.default_rng(2))
    assert mask[:, 30:].sum() == 0
    assert abs(mask[valid].mean() - 0.15) < 0.02
    m = mask.astype(bool)
    zeroed = (out == 0).all(-1) & m
    kept = (out == feats).all(-1) & m
    swapped = m & ~zeroed & ~kept
    assert abs(zeroed.sum() / m.sum() - 0.8) < 0.05
    for i, j in np.argwhere(swapped):   # every swapped row is a real RoI of another image
        hits = np.argwhere((feats == out[i, j]).all(-1))
        assert any(a != i and valid[a, b] for a, b in hits)
    assert swapped.sum() > 0 and (out[~m] == feats[~m]).all()


def _reference_mask_objects(features, box_valid, rng, rate=0.15):
    """The CPU masking of float32 arrays in its plainest form (before the masks moved to the
    device, and before the swap source stopped listing the other images' boxes per swap)."""
    b, n, _ = features.shape
    chosen = (rng.random((b, n)) < rate) & box_valid
    kind = rng.random((b, n))
    out = features.copy()
    out[chosen & (kind < 0.8)] = 0
    swap = np.argwhere(chosen & (kind >= 0.8) & (kind < 0.9))
    if len(swap):
        real = np.argwhere(box_valid)
        for i, j in swap:
            others = real[real[:, 0] != i] if b > 1 else real
            src = others[rng.integers(len(others))]
            out[i, j] = features[src[0], src[1]]
    return out, chosen.astype(np.float32)


@pytest.mark.parametrize("b, n, padded, rate", [(64, 36, False, 0.15), (16, 12, True, 0.5), (1, 20, True, 0.6)])
def test_masks_applied_to_float16_features_equal_the_float32_cpu_masking(b, n, padded, rate):
    rng = np.random.default_rng(b)
    valid = np.ones((b, n), bool)
    if padded:
        valid = np.arange(n) < rng.integers(1, n + 1, b)[:, None]
    feats16 = (rng.exponential(2.0, (b, n, 8)) * valid[..., None]).astype(np.float16)
    feats32 = feats16.astype(np.float32)
    swaps = 0
    for seed in range(5):
        reference_rng = np.random.default_rng(seed)
        expected, expected_mask = _reference_mask_objects(feats32, valid, reference_rng, rate)
        drawn_rng = np.random.default_rng(seed)
        masks = draw_object_masks(valid, drawn_rng, rate=rate)
        assert drawn_rng.random() == reference_rng.random()    # the stream goes on from the same place
        shipped = torch.from_numpy(feats16)
        out = apply_object_masks(shipped, torch.from_numpy(masks.zero), torch.from_numpy(masks.swap))
        assert out.dtype == torch.float16 and torch.equal(shipped, torch.from_numpy(feats16))   # input untouched
        assert torch.equal(out.float(), torch.from_numpy(expected))
        assert (masks.chosen.astype(np.float32) == expected_mask).all()
        assert masks.chosen.flatten()[masks.zero].all() and masks.chosen.flatten()[masks.swap[0]].all()
        cpu, cpu_mask = mask_objects(feats32, valid, np.random.default_rng(seed), rate=rate)
        assert (cpu == expected).all() and (cpu_mask == expected_mask).all()
        swaps += masks.swap.shape[1]
    assert swaps > 0   # the swaps with another image's (or, alone, the same image's) boxes were exercised
    nothing = ObjectMasks.none(b, n)    # the visual tasks switched off
    kept = apply_object_masks(torch.from_numpy(feats16), torch.from_numpy(nothing.zero), torch.from_numpy(nothing.swap))
    assert torch.equal(kept, torch.from_numpy(feats16)) and not nothing.chosen.any()


def test_matching_and_qa_sampling():
    from pipeline.pretraining.masking import mismatch, sample_answers

    images = np.repeat(np.arange(50), 4)
    rng = np.random.default_rng(3)
    source, matched = mismatch(images, rng, pool_images=images)
    assert abs(matched.mean() - 0.5) < 0.1
    swapped = source >= 0
    assert (images[source[swapped]] != images[swapped]).all()
    labels = [{7: 1.0, 9: 0.3}] * 4000 + [None, {}]
    ans = sample_answers(labels, np.ones(len(labels), int), np.random.default_rng(0))
    assert (ans[-2:] == IGNORE).all()
    assert abs((ans[:4000] == 9).mean() - 0.3 / 1.3) < 0.03 and set(ans[:4000]) == {7, 9}
    none = sample_answers(labels[:3], np.zeros(3, int), np.random.default_rng(0))
    assert (none == IGNORE).all()
