"""The scale generator and benchmark on a tiny fraction, through the same code paths as the
full-size run; and the fast paths the scale table led to, each against the plain path it
replaced (same results for the same input and random stream)."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.features import FeatureStore
from pipeline.features.manifest import verify_store
from pipeline.pretraining.examples import _answer_ids
from pipeline.readers.answers import AnswerVocab, convert_ans
from pipeline.readers.lxmert_json import read_pretrain_json
from pipeline.readers.strict_json import Where

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_scale  # noqa: E402
import scale_world  # noqa: E402

FRACTION = 1 / 4096


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scale")
    return out, scale_world.write_world(out, FRACTION)


def test_world_has_the_real_sizes_times_the_fraction(world):
    out, report = world
    store = FeatureStore(out / "features")
    assert len(store) == round(180_000 * FRACTION) == report["store"]["images"]
    assert verify_store(out / "features") == []        # manifest and checksums as extract leaves them
    assert store.image_ids == sorted(store.image_ids)  # cut from the sorted ids, as extract cuts a folder
    image = store.get(store.image_ids[0])
    assert image.features.shape == (36, 2048) and image.features.dtype == np.float16
    feats = np.stack([store.get(i).features for i in store.image_ids[:8]]).astype(np.float32)
    assert feats.min() == 0 and 0.3 < (feats == 0).mean() < 0.5 and feats.max() > 5   # post-ReLU-like
    assert (image.boxes[:, 2:] > image.boxes[:, :2]).all()

    corpus = report["corpus"]
    assert corpus["sentences"] == sum(round(n * FRACTION) for n in scale_world.CORPUS_SENTENCES.values())
    entries = [e for name in ("mscoco_train", "mscoco_nominival", "vgnococo", "mscoco_minival")
               for e in read_pretrain_json(out / "data" / "lxmert" / f"{name}.json")]
    assert sum(len(v) for e in entries for v in e.sentf.values()) == corpus["sentences"]
    assert all(len(e.labelf[s]) == len(e.sentf[s]) for e in entries for s in e.labelf)
    assert {e.image_id for e in entries} <= set(store.image_ids)   # every pretraining image has features

    vqa = json.loads((out / "data" / "vqa" / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    assert len(vqa) == round(214_354 * FRACTION) and all(len(a["answers"]) == 10 for a in vqa)
    gqa = json.loads((out / "data" / "gqa" / "testdev_all_questions.json").read_text())
    assert len(gqa) == round(172_174 * FRACTION)


def test_world_is_deterministic(world, tmp_path):
    out, _ = world
    again = scale_world.write_world(tmp_path, FRACTION, parts=("corpus",))
    for name in ("mscoco_train", "vgnococo"):
        assert (tmp_path / "data" / "lxmert" / f"{name}.json").read_bytes() == \
            (out / "data" / "lxmert" / f"{name}.json").read_bytes()
    assert again["corpus"]["sentences"] > 0


def test_benchmark_stages_run_on_the_world(world):
    out, _ = world
    rows = bench_scale.Rows(out, "evaluate")
    bench_scale.measure_evaluate(out, rows)
    by_step = {r["step"]: r for r in rows.rows}
    assert by_step["vqa val2014"]["size"] == round(214_354 * FRACTION)
    # the predicted answer is the gold multiple-choice answer for about 60 % of the questions
    assert 20 < by_step["vqa val2014"]["accuracy"] < 70
    assert by_step["gqa testdev"]["consistency"] is not None  # entailed questions are in the all-questions file
    rows = bench_scale.Rows(out, "corpus")
    bench_scale.measure_corpus(out, rows)
    train = [e for name in ("mscoco_train", "mscoco_nominival", "vgnococo")
             for e in read_pretrain_json(out / "data" / "lxmert" / f"{name}.json")]
    assert rows.rows[-1]["size"] == sum(len(v) for e in train for v in e.sentf.values())


def test_benchmark_prepares_and_loads_pretraining_batches(world):
    out, _ = world
    rows = bench_scale.Rows(out, "prep")
    bench_scale.measure_prep(out, rows)
    prepared = rows.rows[0]
    assert prepared["images"] > 0 and prepared["missing_images"] == 0 and prepared["size"] > 1000
    rows = bench_scale.Rows(out, "loader")
    bench_scale.measure_loader(out, rows, workers=(0,), batches=2)
    assert rows.rows[0]["size"] == round(180_000 * FRACTION) and rows.rows[0]["examples_per_s"] > 0


def test_growth_exponent():
    assert bench_scale.growth([(10, 1.0), (100, 10.0), (1000, 100.0)]) == pytest.approx(1.0)
    assert bench_scale.growth([(10, 1.0), (100, 100.0)]) == pytest.approx(2.0)
    assert bench_scale.growth([(10, 5.0)]) is None


# -- fast paths against the plain ones -----------------------------------------------------------

def test_answer_ids_memo_and_answer_table_match_the_plain_path(world):
    out, _ = world
    entries = read_pretrain_json(out / "data" / "lxmert" / "vgnococo.json")
    labels = [lab for e in entries for src in e.labelf for lab in e.labelf[src]]
    labels.append({"The Two.": 0.3, "two": 0.9, "a dog": 1.0})   # several raw answers, one converted answer
    vocab = AnswerVocab.for_pretraining(entries)
    counts = collections.Counter(convert_ans(a) for lab in labels[:-1] for a in lab)
    counts.pop("", None)
    assert vocab.answers == sorted(counts, key=lambda a: (-counts[a], a))
    vocab = AnswerVocab(vocab.answers[:50] + ["2", "dog"])
    known: dict = {}
    assert [_answer_ids(lab, vocab, known) for lab in labels] == [_answer_ids(lab, vocab) for lab in labels]


def test_pretrain_json_fast_path_still_names_a_bad_value(tmp_path):
    good = [{"img_id": "a", "sentf": {"vqa": ["q1?", "q2?"]}, "labelf": {"vqa": [{"x": 1}, {"y": 0.5, "z": 1.0}]}}]
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good))
    entry = read_pretrain_json(path)[0]
    assert entry.sentf == {"vqa": ["q1?", "q2?"]}
    assert entry.labelf == {"vqa": [{"x": 1.0}, {"y": 0.5, "z": 1.0}]}
    assert all(type(s) is float for lab in entry.labelf["vqa"] for s in lab.values())
    for bad, message in ((["q1?", 3], "[0].sentf.vqa[1]: expected a string"),
                         ([{"x": 1}, {"y": True}], "[0].labelf.vqa[1].y: expected an integer or a number"),
                         ([{"x": 1}], "[0].labelf.vqa: expected 2 items, got 1")):
        data = json.loads(json.dumps(good))
        if isinstance(bad[0], str):
            data[0]["sentf"]["vqa"] = bad
        else:
            data[0]["labelf"]["vqa"] = bad
        path.write_text(json.dumps(data))
        with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace(".", r"\.")):
            read_pretrain_json(path)


def test_where_key_paths():
    w = Where("f.json")
    assert w["annotations"][12]["answers"].keys == "annotations[12].answers"
    assert w[3]["x"].keys == "[3].x" and w.keys == ""
    assert str(w["a"][0].error("bad")).endswith("a[0]: bad") and w["a"].file == Path("f.json")


def test_benchmark_store_rows_compare_the_plain_and_the_new_bookkeeping(world):
    out, _ = world
    rows = bench_scale.Rows(out, "store")
    bench_scale.measure_store(out, rows)
    by_step = {r["step"]: r for r in rows.rows}
    n = round(180_000 * FRACTION)
    assert by_step["extract re-run bookkeeping (ids once, stamp vouches)"]["size"] == n
    assert by_step["features verify"]["problems"] == 0                 # both re-runs left a good manifest
    rows = bench_scale.Rows(out, "writer")
    bench_scale.measure_shard_writer(out, rows, repeats=1)
    assert len(rows.rows) == 2 and all(r["same_bytes"] and r["size"] == n for r in rows.rows)


def test_benchmark_prepares_again_without_rewriting(world):
    out, _ = world
    rows = bench_scale.Rows(out, "prep")
    bench_scale.measure_prep(out, rows)
    bench_scale.measure_prep_again(out, rows)
    assert rows.rows[-1]["arrays_rewritten"] == 0 and rows.rows[-1]["size"] == rows.rows[0]["size"]


@pytest.mark.slow
def test_benchmark_checkpoint_and_resume(world):
    out, _ = world
    rows = bench_scale.Rows(out, "checkpoint")
    bench_scale.measure_checkpoint(out, rows, preset="tiny")
    bench_scale.measure_resume(out, rows)
    by_step = {r["step"]: r for r in rows.rows}
    assert by_step["save checkpoint"]["disk_mb"] > 0
    resume = by_step["pretrain --resume: start to first step logged"]
    assert resume["size"] == by_step["build the model"]["size"] and resume["startup_s"] > 0
