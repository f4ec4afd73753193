"""Fine-tuning VQA/GQA/NLVR2 on a small synthetic world with ground-truth features: the
reference losses, batches that pair the right images, the run directory, init from a
pretraining directory or an original .pth with answer rows matched by name, exact resume,
and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from model import load_pretrained
from model.tokenizer import train_wordpiece
from pipeline.errors import PipelineError, UsageError
from pipeline.features import FeatureStore
from pipeline.stages.finetune import FinetuneOptions, finetune, prepare_finetune
from pipeline.finetune.splits import read_nlvr2_split, read_vqa_split
from pipeline.inputs.text import load_run_tokenizer
from pipeline.readers.answers import AnswerVocab
from pipeline.synth.oracle import oracle_images, write_oracle_store
from pipeline.training import RunDir, TrainConfig
from tests.helpers.feature_data import make_store
from tests.helpers.finetune_world import make_world, pretraining_directory
from tests.helpers.original_checkpoints import to_original_pretraining


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("finetune"))


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: a second intra-op thread only adds synchronisation (and, on a shared
    # 2-core machine, stalls of 10x when the other core is busy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def options(world, task, **kw):
    data, store = world
    return FinetuneOptions(task=task, features=str(store), data=str(data), **{"preset": "tiny", **kw})


def config(**kw):
    base = dict(epochs=4, batch_size=16, lr=2e-3, warmup=0.1, clip_norm=5.0, log_every=2, val_batch_size=64,
                best_metric="accuracy", progress=False, seed=5)
    base.update(kw)
    return TrainConfig(**base)


def train_losses(run):
    return [m["loss"] for m in RunDir(run).metrics() if m.get("split") != "val"]


def val_lines(run):
    return [m for m in RunDir(run).metrics() if m.get("split") == "val"]


@pytest.mark.parametrize("task", ["vqa", "gqa", "nlvr2"])
def test_each_task_fine_tunes_from_scratch_into_a_complete_run(tmp_path, world, task):
    run = tmp_path / task
    batch = 8 if task == "nlvr2" else 16      # NLVR2's 32 training statements: 4 steps an epoch
    result = finetune(options(world, task), run, layers=[config(batch_size=batch, epochs=6 if task == "nlvr2" else 4).to_dict()])
    assert result["step"] == result["total_steps"] and result["final_dir"] == str(run / "final")
    losses = train_losses(run)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    vals = val_lines(run)
    assert len(vals) == (6 if task == "nlvr2" else 4) and all(0 <= v["accuracy"] <= 100 for v in vals)
    best = RunDir(run).best_record()
    assert best["value"] == max(v["accuracy"] for v in vals)
    if task != "nlvr2":   # answering beats guessing uniformly among the answers
        answers = json.loads((run / "answers.json").read_text())
        assert best["value"] > 100 / len(answers)
    record = RunDir(run).read_config()
    assert record["stage"] == "finetune" and record["task"] == task
    opts = record["task_options"]
    assert {"features", "data", "train_splits", "valid_split", "init", "answers_file", "language_only"} <= set(opts)
    assert opts["init"]["kind"] == "scratch" and record["train"]["best_metric"] == "accuracy"
    # every model directory is self-contained: weights, config (answers as labels), tokenizer
    for name in ("final", "best"):
        model = load_pretrained(run / name)
        assert load_run_tokenizer(run / name).get_vocab() == load_run_tokenizer(run).get_vocab()
        if task != "nlvr2":
            assert model.config.answers == json.loads((run / "answers.json").read_text())


def test_vqa_model_loads_in_transformers(tmp_path, world):
    import transformers

    run = tmp_path / "vqa"
    finetune(options(world, "vqa"), run, layers=[config(epochs=1).to_dict()])
    theirs = transformers.LxmertForQuestionAnswering.from_pretrained(run / "final").eval()
    ours = load_pretrained(run / "final").eval()
    task = prepare_finetune(options(world, "vqa"), tmp_path / "other")
    batch = task.batches(task.examples(["val2014"])[:4], load_run_tokenizer(run), labelled=False).make_batch(
        np.arange(4), np.random.default_rng(0), 0)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**batch).question_answering_score, ours(**batch).question_answering_score,
                                   atol=1e-5, rtol=1e-5)


def test_vqa_loss_is_bce_times_answers_on_soft_scores(tmp_path, world):
    task = prepare_finetune(options(world, "vqa"), tmp_path / "run")
    data = task.train_data()
    examples = task.examples(task.train_splits)
    # a question the annotators disagreed on: its target holds every in-vocabulary soft score
    mixed = next(i for i, e in enumerate(examples) if len([a for a in e.scores if a in task.answers]) > 1)
    indices = np.array([mixed, 0, 1, 2])
    batch = data.make_batch(indices, np.random.default_rng(0), 0)
    for row, i in enumerate(indices):
        expected = {task.answers.index(a): s for a, s in examples[i].scores.items() if a in task.answers}
        got = {j: float(batch["labels"][row, j]) for j in torch.nonzero(batch["labels"][row]).flatten().tolist()}
        assert got == pytest.approx(expected)
    model = task.build_model().eval()
    with torch.no_grad():
        loss, _ = task.loss(model, batch, 0)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).question_answering_score
    expected = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="sum") / len(indices)
    torch.testing.assert_close(loss, expected)   # = mean BCE x number of answers


def test_gqa_cross_entropy_is_scaled_by_the_answer_count_as_the_reference(tmp_path, world):
    task = prepare_finetune(options(world, "gqa", loss="ce"), tmp_path / "run")
    batch = task.train_data().make_batch(np.arange(6), np.random.default_rng(0), 0)
    assert batch["labels"].dtype == torch.int64
    model = task.build_model().eval()
    with torch.no_grad():
        loss, _ = task.loss(model, batch, 0)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).question_answering_score
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["labels"]) * len(task.answers))


def test_nlvr2_batches_pair_each_statement_with_its_two_images(tmp_path, world):
    data, store_path = world
    task = prepare_finetune(options(world, "nlvr2"), tmp_path / "run")
    examples = task.examples(["dev"])
    batch = task.batches(examples, load_run_tokenizer(tmp_path / "run"), labelled=True).make_batch(
        np.array([3, 0, 5]), np.random.default_rng(0), 0)
    store = FeatureStore(store_path)
    assert batch["visual_feats"].shape[:2] == (3, 2)
    for row, i in enumerate([3, 0, 5]):
        for side, image_id in enumerate((examples[i].left_image_id, examples[i].right_image_id)):
            regions = store.get(image_id)
            assert image_id.endswith(f"-img{side}")
            np.testing.assert_array_equal(batch["visual_feats"][row, side, :regions.num_boxes].numpy(),
                                          regions.features.astype(np.float32))
        assert int(batch["labels"][row]) == examples[i].label


@pytest.mark.parametrize("task", ["vqa", "nlvr2"])
def test_batches_of_a_float16_store_ship_it_as_stored_and_predict_as_float32_would(tmp_path, world, task):
    data, _ = world
    images, meta = oracle_images(data, feature_dim=32)
    meta.feature_dtype = "float16"                     # what `extract` writes
    store = make_store(tmp_path / "float16", images, meta)
    prepared = prepare_finetune(FinetuneOptions(task=task, features=str(store.directory), data=str(data),
                                                preset="tiny"), tmp_path / "run")
    source = prepared.train_data()
    batch = source.make_batch(np.arange(6), np.random.default_rng(0), 0)
    feats = batch["visual_feats"]
    assert feats.dtype == torch.float16
    example = prepared.examples(prepared.train_splits)[0]
    first = store.get(example.image_ids[0] if task == "nlvr2" else example.image_id)
    shown = feats[0, 0] if task == "nlvr2" else feats[0]
    assert torch.equal(shown[:first.num_boxes], torch.from_numpy(np.array(first.features)))   # the stored bits
    # the model converts on its side: the same outputs as from the float32 conversion of the batch
    torch.manual_seed(0)
    model = prepared.build_model().eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        shipped = prepared.logits(model(**inputs))
        converted = prepared.logits(model(**{**inputs, "visual_feats": feats.float()}))
    assert torch.equal(shipped, converted)
    # and a DataLoader worker hands over the same batches
    items = [np.arange(j * 4, j * 4 + 4) for j in range(2)]
    loader = torch.utils.data.DataLoader(items, batch_size=None, num_workers=1,
                                         collate_fn=lambda idx: source.make_batch(idx, np.random.default_rng(0), 0))
    for idx, got in zip(items, loader):
        here = source.make_batch(idx, np.random.default_rng(0), 0)
        assert list(got) == list(here) and all(torch.equal(got[k], here[k]) for k in here)


def test_language_only_batches_carry_no_image(tmp_path, world):
    task = prepare_finetune(options(world, "vqa", language_only=True), tmp_path / "run")
    batch = task.train_data().make_batch(np.arange(5), np.random.default_rng(0), 0)
    assert batch["visual_feats"].shape == (5, 1, 32) and not batch["visual_feats"].any()
    assert not batch["visual_pos"].any() and "visual_attention_mask" not in batch
    assert task.describe()["language_only"] is True


def _vqa_answers(world):
    """The answer vocabulary a VQA run on the world gets by the reference rule."""
    examples = read_vqa_split(world[0], "train2014") + read_vqa_split(world[0], "val2014")
    return AnswerVocab.for_vqa(examples).answers


def test_init_from_a_pretraining_directory_carries_answer_rows_over_by_name(tmp_path, world):
    task_answers = _vqa_answers(world)
    # the pretraining table: every other task answer (one written as LXMERT's table would not
    # normalise it away: "the " is dropped by the rule), plus answers the task lacks
    shared = task_answers[::2]
    table = ["unrelated answer", *reversed(shared), "another one"]
    pre = pretraining_directory(tmp_path / "pre", *world, answers=table)
    run = tmp_path / "run"
    result = finetune(options(world, "vqa", init=str(pre), preset=None), run, layers=[config(steps=2, epochs=None).to_dict()])
    assert (Path(result["final_dir"]) / "model.safetensors").is_file()
    init = RunDir(run).read_config()["task_options"]["init"]
    assert (init["kind"], init["answers_matched"], init["answers_total"]) == ("directory", len(shared),
                                                                             len(task_answers))
    # the rows themselves: a task answer's row is the table row of the same answer, others 0
    task = prepare_finetune(options(world, "vqa", init=str(pre), preset=None), tmp_path / "again")
    qa = task.build_model()
    source = load_file(str(pre / "model.safetensors"))["answer_head.logit_fc.3.weight"]
    for row, answer in enumerate(task_answers):
        expected = source[table.index(answer)] if answer in table else torch.zeros_like(source[0])
        torch.testing.assert_close(qa.answer_head.logit_fc[3].weight[row], expected)
    # the tokenizer is the pretraining one
    assert load_run_tokenizer(run).get_vocab() == load_run_tokenizer(pre).get_vocab()


def test_init_from_a_pretraining_run_directory_uses_its_final_model(tmp_path, world):
    pre_run = tmp_path / "pretrain-run"
    pretraining_directory(pre_run / "final", *world, answers=["yes", "no"])
    (pre_run / "config.yaml").write_text("task: pretrain\n")
    task = prepare_finetune(options(world, "nlvr2", init=str(pre_run), preset=None), tmp_path / "run")
    assert task.record["init"]["kind"] == "run" and task.record["init"]["weights"].endswith("final")
    model = task.build_model()
    pre = load_file(str(pre_run / "final" / "model.safetensors"))
    torch.testing.assert_close(model.lxmert.pooler.dense.weight, pre["lxmert.pooler.dense.weight"])


def test_init_from_an_original_pth_with_its_answer_table(tmp_path, world):
    task_answers = _vqa_answers(world)
    table = ["nothing else", *task_answers[:3], "unmatched one"]
    pre = pretraining_directory(tmp_path / "pre", *world, answers=table)
    state = load_file(str(pre / "model.safetensors"))
    torch.save(to_original_pretraining(state), tmp_path / "Epoch20_LXRT.pth")
    (tmp_path / "all_ans.json").write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in table]))
    opts = options(world, "vqa", init=str(tmp_path / "Epoch20_LXRT.pth"), vocab=str(pre / "vocab.txt"),
                   init_answers=str(tmp_path / "all_ans.json"))
    task = prepare_finetune(opts, tmp_path / "run")
    expected = 3
    init = task.record["init"]
    assert (init["kind"], init["answers_matched"], init["answers_total"]) == ("checkpoint", expected,
                                                                             len(task_answers))
    model = task.build_model()
    assert model.config.num_attention_heads == 4    # from --preset tiny: an original file does not say
    # without the answer table, one line says what to pass
    with pytest.raises(PipelineError, match="--init-answers"):
        prepare_finetune(options(world, "vqa", init=opts.init, vocab=opts.vocab), tmp_path / "run2")
    with pytest.raises(PipelineError, match="--vocab"):
        prepare_finetune(options(world, "vqa", init=opts.init, init_answers=opts.init_answers), tmp_path / "run3")


def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path, world):
    cfg = config(epochs=3, checkpoint_every=3, log_every=1)
    full = tmp_path / "full"
    finetune(options(world, "gqa"), full, layers=[cfg.to_dict()])
    # the same vocabulary (WordPiece learning is not deterministic from run to run)
    same = options(world, "gqa", vocab=str(full / "tokenizer"))
    cut = tmp_path / "cut"
    finetune(same, cut, layers=[cfg.to_dict()], stop_after=8)     # killed after step 8; last checkpoint 6
    assert not (cut / "final").exists()
    finetune(same, cut, layers=[cfg.to_dict()], resume=True)
    assert RunDir(cut).metrics() != [] and train_losses(cut) == train_losses(full)
    assert [v["accuracy"] for v in val_lines(cut)] == [v["accuracy"] for v in val_lines(full)]
    for name in ("final", "best"):
        a, b = load_file(str(full / name / "model.safetensors")), load_file(str(cut / name / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert RunDir(cut).best_record() == RunDir(full).best_record()


def test_bad_input_is_one_line_naming_the_file(tmp_path, world):
    data, store = world
    with pytest.raises(PipelineError, match=r"unknown gqa split 'dev'.*available gqa splits: testdev, train, val"):
        prepare_finetune(options(world, "gqa", valid_split="dev"), tmp_path / "a")
    with pytest.raises(PipelineError, match="test split"):
        (data / "nlvr2" / "nolabels.json").write_text(
            "".join(json.dumps({"identifier": f"x-1-{i}-0", "sentence": "s"}) + "\n" for i in range(3)))
        prepare_finetune(options(world, "nlvr2", train_splits=["nolabels"]), tmp_path / "b")
    # a store made by another detector (feature dim) than the checkpoint was trained on
    pre = pretraining_directory(tmp_path / "pre", *world, answers=["yes"])
    wider = write_oracle_store(data, tmp_path / "wider", feature_dim=48)
    with pytest.raises(PipelineError, match="feature dim 48 \\(model expects 32\\)") as err:
        prepare_finetune(FinetuneOptions("vqa", str(wider), str(data), init=str(pre)), tmp_path / "c")
    assert str(wider) in str(err.value)
    # a store that lacks the task's images (another world's)
    other = make_world(tmp_path / "other", images=60, seed=7)[1]
    with pytest.raises(PipelineError, match="images of the vqa splits .* not in the feature store") as err:
        prepare_finetune(FinetuneOptions("vqa", str(other), str(data), preset="tiny"), tmp_path / "d")
    assert str(other) in str(err.value)
    with pytest.raises(UsageError, match="vqa fine-tunes with bce"):
        prepare_finetune(options(world, "vqa", loss="ce"), tmp_path / "e")
    run = tmp_path / "done"
    finetune(options(world, "nlvr2"), run, layers=[config(steps=1, epochs=None, batch_size=8).to_dict()])
    with pytest.raises(PipelineError, match="already holds a training run"):
        prepare_finetune(options(world, "nlvr2"), run)


def test_a_vocabulary_that_cuts_many_training_sentences_is_warned_about(tmp_path, world, caplog):
    data, _ = world
    statements = [e.sentence for e in read_nlvr2_split(data, "train")]
    # learnt on VQA's questions alone: NLVR2's words fall apart into letters
    narrow = train_wordpiece([e.sentence for e in read_vqa_split(data, "train2014")], tmp_path / "narrow")
    cut = narrow.count_truncated(statements)
    assert cut > 0.05 * len(statements)
    with caplog.at_level("WARNING", logger="pipeline.stages.finetune"):
        task = prepare_finetune(options(world, "nlvr2", vocab=str(tmp_path / "narrow")), tmp_path / "cut")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"nlvr2: {cut} of the {len(statements)} training sentences" in m and "cut off" in m
               for m in warnings), warnings
    assert task.record["truncated_train_sentences"] == cut
    caplog.clear()
    # a vocabulary learnt on the task's own sentences (from scratch, no --vocab) cuts none
    with caplog.at_level("WARNING", logger="pipeline.stages.finetune"):
        task = prepare_finetune(options(world, "nlvr2"), tmp_path / "whole")
    assert task.record["truncated_train_sentences"] == 0 and not caplog.records


def test_default_recipe_is_the_reference_for_paper_width_models(tmp_path, world):
    from pipeline.finetune.recipe import recipe
    from pipeline.stages.finetune import default_recipe
    from pipeline.training.precision import fast_precision

    for task, lr in (("vqa", 5e-5), ("gqa", 1e-5), ("nlvr2", 5e-5)):
        reference = recipe(task, 768)
        assert (reference["epochs"], reference["batch_size"], reference["lr"], reference["optimizer"],
                reference["warmup"], reference["clip_norm"]) == (4, 32, lr, "bert", 0.1, 5.0)
    small = default_recipe(prepare_finetune(options(world, "gqa"), tmp_path / "run"))
    assert small["optimizer"] == "adamw" and small["lr"] == 1e-3 and small["best_metric"] == "accuracy"
    # NLVR2's head collapses to the majority label at 1e-3 (recipe.py)
    assert default_recipe(prepare_finetune(options(world, "nlvr2"), tmp_path / "nlvr2"))["lr"] == 3e-4
    assert small["precision"] == fast_precision() and "precision" not in reference     # reference: fp32
    TrainConfig(**small)


def test_model_overrides_size_a_network_from_scratch(tmp_path, world):
    task = prepare_finetune(options(world, "vqa", model={"hidden_size": 48, "intermediate_size": 96}), tmp_path / "a")
    model = task.build_model()
    assert model.config.hidden_size == 48 and task.record["model"]["hidden_size"] == 48
    assert model.config.visual_feat_dim == 32       # still the store's
    pre = pretraining_directory(tmp_path / "pre", *world, answers=["yes"])
    with pytest.raises(UsageError, match="from scratch"):
        prepare_finetune(options(world, "vqa", init=str(pre), preset=None, model={"hidden_size": 48}), tmp_path / "b")
    with pytest.raises(UsageError, match="unknown model preset 'huge'"):
        prepare_finetune(options(world, "vqa", preset="huge"), tmp_path / "c")


def test_lxmert_preprocessed_json_splits_are_read_where_the_official_files_are_absent(tmp_path, world):
    from pipeline.readers.lxmert_json import write_task_json
    from pipeline.readers.records import NLVR2TaskExample, TaskExample

    data, store = world
    root = tmp_path / "data"
    shutil.copytree(data, root)
    val = read_vqa_split(data, "val2014")
    (root / "lxmert" / "vqa").mkdir(parents=True)
    write_task_json(root / "lxmert" / "vqa" / "minival.json",
                    [TaskExample(q.question_id, q.image_id, q.sentence, q.scores) for q in val[:20]])
    task = prepare_finetune(FinetuneOptions("vqa", str(store), str(root), preset="tiny", valid_split="minival"),
                            tmp_path / "run")
    assert task.record["valid_examples"] == 20 and task.examples(["minival"])[3].scores == val[3].scores
    nlvr2 = read_nlvr2_split(data, "dev")
    (root / "lxmert" / "nlvr2").mkdir()
    write_task_json(root / "lxmert" / "nlvr2" / "valid.json",
                    [NLVR2TaskExample(e.identifier, e.sentence, e.left_image_id, e.right_image_id, e.label,
                                      f"nlvr2_valid_{i}") for i, e in enumerate(nlvr2)])
    assert read_nlvr2_split(root, "valid") == nlvr2
    with pytest.raises(PipelineError, match="holds question entries, not nlvr2 ones"):
        (root / "lxmert" / "nlvr2" / "wrong.json").write_text((root / "lxmert" / "vqa" / "minival.json").read_text())
        read_nlvr2_split(root, "wrong")
