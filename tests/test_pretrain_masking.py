import numpy as np

from pipeline.pretraining.masking import IGNORE, mask_objects, mask_tokens


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
