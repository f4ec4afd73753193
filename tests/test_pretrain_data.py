"""Pretraining data: examples from a data root and a store, batches by the reference's rules."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.finetune.splits import read_gqa_split, read_nlvr2_split, read_vqa_split
from pipeline.inputs.text import load_run_tokenizer
from pipeline.pretraining import PretrainOptions
from pipeline.stages.pretrain import prepare_pretraining
from pipeline.pretraining.examples import ExampleTable, read_counts
from pipeline.pretraining.masking import IGNORE
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
    # masked objects: only real boxes, targets are the store's unmasked features and labels
    feat_mask = b["feat_mask"].bool()
    assert feat_mask.any()
    # every image of the synthetic world has its 10 boxes: no padding, so no visual mask, as in
    # the reference (that padding is never masked: test_pretrain_masking.py)
    assert "visual_attention_mask" not in b and (b["obj_ids"] != IGNORE).all()
    unchanged = ~feat_mask
    assert (b["visual_feats"][unchanged] == b["feat_targets"][unchanged]).all()
    first = data.store.get(t.image_ids[t.image_index[0]])
    k = first.num_boxes
    np.testing.assert_array_equal(b["obj_ids"][0, :k].numpy(), first.objects_id)
    np.testing.assert_allclose(b["feat_targets"][0, :k].numpy(), first.features)
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
