"""Pretraining data: examples from a data root and a store, batches by the reference's rules."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.finetune.splits import read_gqa_split, read_nlvr2_split, read_vqa_split
from pipeline.inputs.text import load_run_tokenizer
from pipeline.pretraining import PretrainOptions
from pipeline.stages.pretrain import prepare_pretraining
from pipeline.pretraining.examples import ExampleTable, read_counts
from pipeline.inputs.visual import read_visual
from pipeline.pretraining.data import model_batch
from pipeline.pretraining.masking import IGNORE, mask_objects, mask_tokens, mismatch
from pipeline.training.batches import EpochMicroBatches
from pipeline.readers.answers import AnswerVocab
from pipeline.synth.oracle import oracle_images
from tests.helpers.feature_data import make_store
from tests.helpers.pretrain_world import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("pretrain-data"))


@pytest.fixture(scope="module")
def prepared(world, tmp_path_factory):
    data, store = world
    run = tmp_path_factory.mktemp("run") / "run"
    task, summary = prepare_pretraining(store, data, run, preset="tiny")
    return task, summary


def _batch(task, rows, seed=0, epoch=0, split="train"):
    data = task.train_data() if split == "train" else task.val_data()
    return data, data.make_batch(np.asarray(rows), np.random.default_rng(seed), epoch)


def test_examples_are_every_sentence_of_every_source_with_answers_in_the_table(prepared):
    task, summary = prepared
    train = summary["train"]
    assert summary["sources"] == ["mscoco", "vg", "vqa", "gqa", "vgqa"]
    assert train["examples"] == sum(train["by_source"].values()) and train["missing_images"] == 0
    assert train["qa_examples"] > 0 and summary["valid"]["examples"] > 0
    table = ExampleTable.load(f"{task.run_path}/data/train")
    assert len(table) == train["examples"] and table.input_ids.shape[1] == 20
    answers = AnswerVocab.load(f"{task.run_path}/answers.json")
    assert task.config.answers == answers.answers and task.config.num_qa_labels == len(answers)
    questions = [i for i, s in enumerate(table.source) if table.sources[s] in ("vqa", "gqa", "vgqa")]
    captions = [i for i, s in enumerate(table.source) if table.sources[s] in ("mscoco", "vg")]
    assert all(label for label in table.labels(questions)) and not any(table.labels(captions))


def test_a_learnt_vocabulary_keeps_the_fine_tuning_sentences_whole(world, prepared):
    # the pretraining corpus (captions, QA) never says "image", "contains" or "exactly"; learnt
    # on it alone the vocabulary spelt them out and cut half of NLVR2's statements at 20 pieces
    data, _ = world
    task, _ = prepared
    tokenizer = load_run_tokenizer(task.run_path)
    split_words = tokenizer.backend.pre_tokenizer.pre_tokenize_str
    words = collections.Counter(word for e in read_nlvr2_split(data, "train")
                                for word, _ in split_words(e.sentence.lower()))
    assert words["image"] >= 2
    for word in ("image", "contains", "exactly", "both"):
        if words[word] >= 2:     # WordPiece keeps words seen at least twice
            assert tokenizer.tokenize(word) == [word]
    for name, read in (("vqa", lambda: read_vqa_split(data, "train2014")), ("gqa", lambda: read_gqa_split(data, "train")),
                       ("nlvr2", lambda: read_nlvr2_split(data, "train"))):
        sentences = [e.sentence for e in read()]
        assert sentences and tokenizer.count_truncated(sentences) == 0, name
    ids = tokenizer.encode_batch(["The left image contains exactly two squares."]).input_ids[0]
    assert tokenizer.convert_ids_to_tokens(ids[ids != tokenizer.pad_id])[-4:] == ["two", "squares", ".", "[SEP]"]


def test_images_missing_from_the_store_are_counted_not_errors(world, tmp_path):
    data, _ = world
    images, meta = oracle_images(data, feature_dim=32)
    half = make_store(tmp_path / "half", images[::2], meta)
    task, summary = prepare_pretraining(half.directory, data, tmp_path / "run", preset="tiny")
    counts = read_counts(f"{task.run_path}/data/train")
    assert counts.missing_images > 0 and counts.missing_sentences > 0
    assert summary["train"]["missing_images"] == counts.missing_images
    table = ExampleTable.load(f"{task.run_path}/data/train")
    assert all(i in half for i in table.image_ids)


def test_no_usable_examples_and_a_mismatched_store_are_one_clear_error(world, tmp_path):
    data, store = world
    images, meta = oracle_images(data, feature_dim=32)
    foreign = make_store(tmp_path / "foreign", [images[0].__class__(**{**vars(images[0]), "image_id": "elsewhere"})],
                         meta)
    with pytest.raises(PipelineError, match="no usable pretraining examples") as err:
        prepare_pretraining(foreign.directory, data, tmp_path / "a", preset="tiny")
    assert str(data) in str(err.value) and str(foreign.directory) in str(err.value)
    with pytest.raises(PipelineError, match="feature dim 32 \\(model expects 48\\)") as err:
        prepare_pretraining(store, data, tmp_path / "b", preset="tiny",
                            options=PretrainOptions(model={"visual_feat_dim": 48}))
    assert str(store) in str(err.value)


def test_a_batch_follows_the_reference_rules(prepared):
    task, _ = prepared
    data, b = _batch(task, np.arange(64), seed=1)
    t = data.table
    n = b["visual_feats"].shape[1]
    assert b["input_ids"].shape == (64, 20) and b["visual_feats"].shape == (64, n, 32)
    # masked LM: labels only on WordPieces (never [CLS], [SEP], padding), -100 elsewhere
    specials = task.special_ids
    labelled = b["labels"] != IGNORE
    assert labelled.any() and not labelled[:, 0].any()
    assert not labelled[b["attention_mask"] == 0].any()
    # matching: unmatched rows carry a sentence of another image, and never a QA target
    matched = b["matched_label"].numpy().astype(bool)
    assert 0 < matched.sum() < 64
    original = t.input_ids[:64].astype(np.int64)
    restored = np.where(labelled.numpy(), b["labels"].numpy(), b["input_ids"].numpy())
    assert (restored[matched] == original[matched]).all()
    assert (b["ans"][~matched] == IGNORE).all() and (b["ans"][matched] != IGNORE).any()
    asked = b["ans"] != IGNORE
    labels = t.labels(np.arange(64))
    assert all(labels[i] and int(b["ans"][i]) in labels[i] for i in np.flatnonzero(asked))
    # masked objects: only real boxes, targets are the store's unmasked features and labels;
    # the loader ships the store's float16 features once, the masks apply on the device
    feat_mask = b["feat_mask"].bool()
    assert feat_mask.any()
    assert b["visual_feats"].dtype == torch.float32 and "feat_targets" not in b    # the store's dtype
    # every image of the synthetic world has its 10 boxes: no padding, so no visual mask, as in
    # the reference (that padding is never masked: test_pretrain_masking.py)
    assert "visual_attention_mask" not in b and (b["obj_ids"] != IGNORE).all()
    seen = model_batch(b)
    assert seen["feat_targets"] is b["visual_feats"] and "feat_swap" not in seen
    unchanged = ~feat_mask
    assert (seen["visual_feats"][unchanged] == seen["feat_targets"][unchanged]).all()
    zeroed = seen["visual_feats"].flatten(0, 1)[b["feat_zero"]]
    assert len(zeroed) and (zeroed == 0).all() and feat_mask.flatten()[b["feat_zero"]].all()
    first = data.store.get(t.image_ids[t.image_index[0]])
    k = first.num_boxes
    np.testing.assert_array_equal(b["obj_ids"][0, :k].numpy(), first.objects_id)
    np.testing.assert_array_equal(seen["feat_targets"][0, :k].numpy(), first.features)
    # positions: the boxes over the image's width and height
    np.testing.assert_allclose(b["visual_pos"][0, :k].numpy(), first.normalized_boxes(), rtol=1e-6)


def test_batches_are_deterministic_for_a_seed_in_any_process(prepared):
    task, _ = prepared
    data, a = _batch(task, [5, 9, 2, 40], seed=3)
    _, b = _batch(task, [5, 9, 2, 40], seed=3)
    _, c = _batch(task, [5, 9, 2, 40], seed=4)
    worker_copy = pickle.loads(pickle.dumps(data))     # what a spawned DataLoader worker gets
    assert worker_copy._table is None and worker_copy._store is None
    d = worker_copy.make_batch(np.array([5, 9, 2, 40]), np.random.default_rng(3), 0)
    for k in a:
        assert (a[k] == b[k]).all() and (a[k] == d[k]).all(), k
    assert any(not (a[k] == c[k]).all() for k in ("input_ids", "matched_label", "feat_mask"))


def test_qa_targets_start_at_qa_from_epoch(prepared):
    task, _ = prepared
    late = task.train_data()
    late.options = late.options.replace(qa_from_epoch=2)
    rows = np.arange(len(late))[:128]
    before = late.make_batch(rows, np.random.default_rng(0), 1)
    after = late.make_batch(rows, np.random.default_rng(0), 2)
    assert (before["ans"] == IGNORE).all() and (after["ans"] != IGNORE).any()
    # validation always scores QA, with every row's soft scores for the accuracy
    val = task.val_data()
    v = val.make_batch(np.arange(len(val)), np.random.default_rng(0), 0)
    assert v["answer_scores"].shape == (len(val), task.config.num_qa_labels)
    asked = v["ans"] != IGNORE
    assert (v["answer_scores"][asked].gather(1, v["ans"][asked, None]) > 0).all()


# ---- the float16 batch: the masks drawn in the loader, applied on the device ----------------

def _float16_run(world, root, min_boxes: int):
    """A run on a float16 store (what `extract` writes) of the world's regions."""
    data, _ = world
    images, meta = oracle_images(data, feature_dim=32, min_boxes=min_boxes)
    meta.feature_dtype = "float16"
    store = make_store(root / "features", images, meta)
    task, _ = prepare_pretraining(store.directory, data, root / "run", preset="tiny")
    return task


@pytest.fixture(scope="module")
def full_task(world, tmp_path_factory):
    """Every image with 10 boxes: nothing padded, as with the reference's 36."""
    return _float16_run(world, tmp_path_factory.mktemp("full"), min_boxes=10)


@pytest.fixture(scope="module")
def padded_task(world, tmp_path_factory):
    """Images with 2-6 boxes: batches are padded."""
    return _float16_run(world, tmp_path_factory.mktemp("padded"), min_boxes=1)


def _reference_inputs(data, rows, seed):
    """What the model took before the masks moved to the device: make_batch's draws replayed in
    their order (matching, masked LM, masked objects) with the features converted to float32
    and masked on the CPU. -> (input_ids, visual_feats, feat_targets, feat_mask)."""
    t, opts = data.table, data.options
    rng = np.random.default_rng(seed)
    images = t.image_index[rows].astype(np.int64)
    swapped_from, _ = mismatch(images, rng, pool_images=t.image_index, rate=opts.mismatch_rate)
    ids = t.input_ids[np.where(swapped_from >= 0, swapped_from, rows)].astype(np.int64)
    maskable = (ids != data.pad_id) & (ids != data.cls_id) & (ids != data.sep_id)
    input_ids, _ = mask_tokens(ids, maskable, rng, vocab_size=data.vocab_size, mask_id=data.mask_id,
                               rate=opts.word_mask_rate)
    visual = read_visual(data.store, [t.image_ids[i] for i in images])
    assert visual.features.dtype == np.float32
    features, feat_mask = mask_objects(visual.features, visual.mask > 0, rng, rate=opts.obj_mask_rate)
    return input_ids, features, visual.features, feat_mask


@pytest.mark.parametrize("which", ["full", "padded"])
def test_the_model_sees_exactly_the_reference_s_cpu_masked_float32_features(which, full_task, padded_task):
    task = full_task if which == "full" else padded_task
    data = task.train_data()
    rows = np.random.default_rng(7).permutation(len(data))[:64]
    for seed in range(4):
        b = data.make_batch(rows, np.random.default_rng(seed), 0)
        input_ids, features, targets, feat_mask = _reference_inputs(data, rows, seed)
        assert ("visual_attention_mask" in b) == (which == "padded")
        assert b["visual_feats"].dtype == torch.float16 and "feat_targets" not in b
        assert torch.equal(b["input_ids"], torch.from_numpy(input_ids))   # the random stream is the same
        seen = model_batch(b)
        assert seen["visual_feats"].dtype == seen["feat_targets"].dtype == torch.float16
        assert torch.equal(seen["visual_feats"].float(), torch.from_numpy(features))
        assert torch.equal(seen["feat_targets"].float(), torch.from_numpy(targets))
        assert torch.equal(seen["feat_mask"], torch.from_numpy(feat_mask))
        assert feat_mask.any() and (features != targets).any()


def test_losses_and_validation_are_those_of_the_float32_batch(padded_task):
    """The job masks on the device and the model converts float16: every loss and validation
    number equals the old float32 batch's, in fp32 and under bf16 autocast."""
    task = padded_task
    data, val = task.train_data(), task.val_data()
    torch.manual_seed(0)
    model = task.build_model().eval()

    def as_before(batch, rows, seed, source):
        _, features, targets, _ = _reference_inputs(source, rows, seed)
        old = dict(model_batch(batch))
        old.update(visual_feats=torch.from_numpy(features), feat_targets=torch.from_numpy(targets))
        return old

    rows = np.arange(32)
    new = data.make_batch(rows, np.random.default_rng(3), 0)
    old = as_before(new, rows, 3, data)
    val_rows = np.arange(min(16, len(val)))
    val_new = val.make_batch(val_rows, np.random.default_rng(4), 0)
    val_old = as_before(val_new, val_rows, 4, val)
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            total_new, parts_new = task.loss(model, new, 0)
            total_old, parts_old = task.loss(model, old, 0)
            metrics_new = task.validate(model, [val_new], 0)
            metrics_old = task.validate(model, [val_old], 0)
        assert torch.equal(total_new, total_old), autocast
        assert all(torch.equal(parts_new[k], parts_old[k]) for k in parts_old) and parts_new.keys() == parts_old.keys()
        assert metrics_new == metrics_old and "mlm_other_image" in metrics_new


def test_batches_made_in_a_dataloader_worker_are_the_same(padded_task):
    # a worker writes the batch into shared memory (pipeline/inputs/batch_memory.py)
    data = padded_task.train_data()
    items = EpochMicroBatches(data, seed=2, epoch=1, batch_size=16, grad_accum=1, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(items, batch_size=None, sampler=range(3), num_workers=1)
    for j, got in enumerate(loader):
        here = items[j]
        assert list(got) == list(here)
        for k in here:
            assert got[k].dtype == here[k].dtype and torch.equal(got[k], here[k]), (j, k)
        assert torch.equal(model_batch(got)["visual_feats"], model_batch(here)["visual_feats"])
