"""Pretraining through the one training loop: reference-quirk options, exact resume, falling losses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pipeline.stages.pretrain import prepare_pretraining
from pipeline.training import RunDir, TrainConfig, train
from tests.helpers.pretrain_world import make_world


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    data, store = make_world(tmp_path_factory.mktemp("pretrain-train"))
    task, _ = prepare_pretraining(store, data, tmp_path_factory.mktemp("run") / "run", preset="tiny")
    return task


def with_options(task, **changes):
    """The same run with other task options (what prepare_pretraining would record)."""
    options = task.options.replace(**changes)
    return dataclasses.replace(task, options=options, model_config={**task.model_config, **options.model_flags()})


def _losses(task, model, batch, epoch=0):
    model.config = task.config
    with torch.no_grad():
        total, parts = task.loss(model, batch, epoch)
        out = task._forward(model, batch)
    return float(total), {k: float(v) for k, v in parts.items()}, out


def test_reference_quirk_options_change_the_losses_as_documented(task):
    torch.manual_seed(0)
    model = task.build_model().eval()
    data = task.train_data()
    batch = data.make_batch(np.arange(32), np.random.default_rng(0), 0)
    total, ref, out = _losses(task, model, batch)
    assert set(ref) == {"mlm", "matched", "obj", "attr", "feat", "qa"}
    assert total == pytest.approx(sum(ref.values()), rel=1e-6)

    # reference: obj CE on every object, weighted by the detector's confidence, mean over B*N, x 1/0.15
    logits = out.visual_prediction_scores["obj"].flatten(0, 1)
    ce = F.cross_entropy(logits, batch["obj_ids"].flatten(), ignore_index=-100, reduction="none")
    conf, feat_mask = batch["obj_conf"].flatten(), batch["feat_mask"].flatten()
    assert ref["obj"] == pytest.approx(float((ce * conf).mean() / 0.15), rel=1e-5)

    _, masked, _ = _losses(with_options(task, visual_label_loss_scope="masked"), model, batch)
    assert masked["obj"] == pytest.approx(float((ce * conf * feat_mask).mean() / 0.15), rel=1e-5)
    assert masked["obj"] < ref["obj"] / 2 and masked["feat"] == pytest.approx(ref["feat"], rel=1e-6)

    _, plain, _ = _losses(with_options(task, visual_loss_normalizer=1.0), model, batch)
    for k in ("obj", "attr", "feat"):
        assert plain[k] == pytest.approx(ref[k] * 0.15, rel=1e-5)
    for k in ("mlm", "matched", "qa"):
        assert plain[k] == pytest.approx(ref[k], rel=1e-6)

    doubled_total, doubled, _ = _losses(with_options(task, qa_weight=2.0), model, batch)
    assert doubled_total == pytest.approx(total + ref["qa"], rel=1e-5)

    late = with_options(task, qa_from_epoch=1)
    early_batch = late.train_data().make_batch(np.arange(32), np.random.default_rng(0), 0)
    _, early, _ = _losses(late, model, early_batch)
    assert early["qa"] == 0.0 and early["mlm"] == pytest.approx(ref["mlm"], rel=1e-6)


def _config(**kw):
    base = dict(steps=8, batch_size=16, lr=3e-3, optimizer="bert", warmup=0.2, log_every=1, checkpoint_every=3,
                val_every=4, progress=False, seed=11)
    return TrainConfig(**{**base, **kw})


def _train_lines(run):
    return [m for m in run.metrics() if m.get("split") != "val"]


def test_a_killed_and_resumed_pretraining_gives_exactly_the_uninterrupted_losses(task, tmp_path):
    config = _config()   # dropout, masking, matching and answer sampling all draw random numbers
    full = RunDir(tmp_path / "full")
    full.check_writable()
    assert train(task, config, full).step == 8

    # the interrupted run reads its batches in a DataLoader worker process (memory-mapped
    # examples and store): the batches, hence the losses, are the same as in the main process
    cut = RunDir(tmp_path / "cut")
    cut.check_writable()
    train(task, config.replace(num_workers=1), cut, stop_after=5)   # killed after step 5; last checkpoint: 3
    assert cut.latest_checkpoint().name == "step-0000003"
    train(task, config.replace(num_workers=1), cut, resume=True)

    strip = [{k: v for k, v in m.items() if k != "examples_per_s"} for m in _train_lines(full)]
    assert [{k: v for k, v in m.items() if k != "examples_per_s"} for m in _train_lines(cut)] == strip
    assert [m for m in cut.metrics() if m.get("split") == "val"] == [m for m in full.metrics() if m.get("split") == "val"]
    a = load_file(str(full.path / "final" / "model.safetensors"))
    b = load_file(str(cut.path / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    val = [m for m in full.metrics() if m.get("split") == "val"]
    assert [m["step"] for m in val] == [4, 8] and "qa_accuracy" in val[-1] and "qa_accuracy_vqa" in val[-1]


def test_every_task_loss_falls_on_a_small_synthetic_run(task, tmp_path):
    from pipeline.training.checkpoint import load_weights

    # losses on one fixed batch (same masks, same swapped sentences) before and after: a
    # paired comparison, free of the batch-to-batch noise of the training log
    batch = task.train_data().make_batch(np.arange(256), np.random.default_rng(123), 0)

    def losses(model):
        model.eval()
        with torch.no_grad():
            return {k: float(v) for k, v in task.loss(model, batch, 0)[1].items()}

    config = _config(steps=50, batch_size=32, lr=3e-3, optimizer="adamw", warmup=0.1, checkpoint_every=None,
                     val_every=10_000, log_every=10)
    torch.manual_seed(config.seed)      # the loop's initialisation
    before = losses(task.build_model())
    run = RunDir(tmp_path / "run")
    run.check_writable()
    result = train(task, config, run)
    trained = task.build_model()
    load_weights(trained, result.final_dir)
    after = losses(trained)
    for k in ("mlm", "obj", "attr", "feat", "qa"):
        assert after[k] < 0.95 * before[k], (k, before[k], after[k])
    # matching needs grounded words, which takes far longer than a test; here it stays at
    # chance (ln 2), not worse
    assert abs(after["matched"] - np.log(2)) < 0.02


def test_validation_measures_how_much_the_model_uses_the_image(task):
    """`*_other_image`: the same sentences and targets shown another image of the batch. The
    validation rows come mostly in runs of one image's sentences; every row must still be
    shown a different image, and a batch of one image has nothing to compare with."""
    from pipeline.pretraining.job import _other_images

    val = task.val_data()
    torch.manual_seed(0)
    model = task.build_model().eval()
    batch = val.make_batch(np.arange(min(len(val), 16)), np.random.default_rng(0), 0)
    own = batch["visual_pos"].flatten(1)
    assert (own[1:] == own[:-1]).all(1).any()          # neighbours that share an image
    shown = _other_images(batch)["visual_pos"].flatten(1)
    assert not (shown == own).all(1).any()
    with torch.no_grad():
        distinct = task.validate(model, [batch], 0)
        same = {k: v[:1].expand_as(v).clone() if k in ("visual_feats", "visual_pos") else v for k, v in batch.items()}
        one_image = task.validate(model, [same], 0)
    assert {"mlm_other_image", "qa_accuracy_other_image"} <= distinct.keys()
    assert abs(distinct["mlm_other_image"] - distinct["mlm"]) > 1e-4
    assert "mlm_other_image" not in one_image and "qa_accuracy_other_image" not in one_image


def test_sentence_words_targets_are_the_unmasked_sentence_without_special_tokens(task):
    words_task = with_options(task, sentence_words_weight=0.5)
    batch = words_task.train_data().make_batch(np.arange(32), np.random.default_rng(0), 0)
    words = words_task._sentence_words(batch)
    special = [task.special_ids[k] for k in ("pad", "cls", "sep", "mask")]
    masked = batch["labels"] != -100
    assert masked.any()
    # masked positions carry the word that was there; everything else the input token
    assert torch.equal(words[masked], batch["labels"][masked])
    kept = words != -100
    assert torch.equal(words[kept & ~masked], batch["input_ids"][kept & ~masked])
    assert not torch.isin(words[kept], torch.tensor(special)).any()
    assert not kept[:, 0].any() and not kept[batch["attention_mask"] == 0].any()
    assert (kept.sum(1) > 0).all()
    assert task._sentence_words(batch) is None   # off by default: the reference's losses

    torch.manual_seed(0)
    model = task.build_model().eval()
    total, ref, _ = _losses(task, model, batch)
    words_total, parts, _ = _losses(words_task, model, batch)
    assert set(parts) == set(ref) | {"words"} and parts["words"] > 0
    assert words_total == pytest.approx(total + 0.5 * parts["words"], rel=1e-5)
    with pytest.raises(ValueError, match="sentence_words_weight"):
        task.options.replace(sentence_words_weight=-1.0)
