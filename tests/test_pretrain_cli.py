"""`lxmert-pipeline pretrain`: a run end to end on Dask, its outputs, --resume, one-line errors,
and a preparation killed half-way that resumes on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from model import LxmertForQuestionAnswering, load_pretrained
from pipeline.inputs.text import load_run_tokenizer
from pipeline.pretraining.options import PretrainOptions
from pipeline.stages.pretrain import prepare_pretraining
from pipeline.synth.oracle import oracle_images
from tests.helpers.feature_data import make_store
from tests.helpers.pretrain_world import make_world
from workflows.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("pretrain-cli"))


def _pretrain(data, store, out, *extra):
    return main(["pretrain", "--features", str(store), "--data", str(data), "--out", str(out), "--preset", "tiny",
                 "--batch-size", "16", "--log-every", "1", "--no-progress", *extra])


def test_a_run_on_dask_is_self_contained_and_resumes(world, tmp_path, capsys):
    data, store = world
    run = tmp_path / "run"
    assert _pretrain(data, store, run, "--steps", "4", "--checkpoint-every", "2", "--precision", "fp32") == 0
    final = run / "final"
    assert {"model.safetensors", "config.json", "resume.pt", "vocab.txt", "tokenizer.json"} <= set(os.listdir(final))
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    described = recorded["task_options"]
    assert described["features"] == str(store) and described["data"] == str(data) and described["preset"] == "tiny"
    assert described["model"]["hidden_size"] == 32 and described["options"]["visual_label_loss_scope"] == "all"
    assert recorded["train"]["steps"] == 4 and recorded["data_summary"]["train"]["examples"] > 0
    # what the fine-tuning stage loads: the QA model with its own answers, and the run's tokenizer
    answers = json.loads((run / "answers.json").read_text())
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LxmertForPreTraining"]
    qa = load_pretrained(final, LxmertForQuestionAnswering, answers=answers[:3] + ["never seen"])
    assert qa.config.num_qa_labels == 4
    tokenizer = load_run_tokenizer(run)
    assert tokenizer.vocab_size == described["model"]["vocab_size"]
    err = capsys.readouterr().err
    assert "pretrained 4 of 4 steps" in err and f"model: {final}" in err

    # resuming keeps the recorded settings; a longer --steps extends the run
    assert _pretrain(data, store, run, "--resume", "--steps", "6") == 0
    steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if m.get("split") != "val"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "pretrained 6 of 6 steps" in capsys.readouterr().err
    assert "already holds a training run" in _error(lambda: _pretrain(data, store, run, "--steps", "2"), capsys)


def _error(call, capsys) -> str:
    assert call() == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_user_errors_are_one_line_naming_the_file(world, tmp_path, capsys):
    data, store = world
    options = tmp_path / "opts.yaml"
    options.write_text("task:\n  model:\n    visual_feat_dim: 2048\n")
    line = _error(lambda: _pretrain(data, store, tmp_path / "a", "--steps", "2", "--config", str(options)), capsys)
    assert str(store) in line and "feature dim 32 (model expects 2048)" in line

    images, meta = oracle_images(data, feature_dim=32)
    foreign = make_store(tmp_path / "foreign", [images[0].__class__(**{**vars(images[0]), "image_id": "x"})], meta)
    line = _error(lambda: _pretrain(data, foreign.directory, tmp_path / "b", "--steps", "2"), capsys)
    assert "no usable pretraining examples" in line and str(data) in line

    (tmp_path / "a-file").write_text("")
    line = _error(lambda: _pretrain(data, store, tmp_path / "a-file" / "run", "--steps", "2"), capsys)
    assert "not writable" in line and str(tmp_path / "a-file" / "run") in line
    assert not (tmp_path / "b" / "config.yaml").exists()


# -- a preparation stopped half-way -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

# prepares in a real process that SIGKILLs itself at the moment `split`'s arrays are all written
# and its completion mark (summary.json) is about to be: the worst partial state a split can be in
_KILLED_AT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import pipeline.pretraining.examples as examples
    from pipeline.stages.pretrain import prepare_pretraining

    store, data, out, split = sys.argv[1:]
    write_json = examples.write_json

    def write_json_or_die(path, *args, **kwargs):
        if Path(path).name == "summary.json" and Path(path).parent.name == split:
            os.kill(os.getpid(), signal.SIGKILL)
        return write_json(path, *args, **kwargs)

    examples.write_json = write_json_or_die
    prepare_pretraining(store, data, out, preset="tiny")
""")


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _inodes(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file's (inode, mtime): a file written again has a new mtime even where the
    filesystem hands the freed inode number to it."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _aged(folder: Path) -> dict[str, tuple[int, int]]:
    """`_inodes` after setting every file's mtime an hour back, so a rewrite cannot keep it."""
    for p in folder.iterdir():
        past = p.stat().st_mtime_ns - 3600 * 10**9
        os.utime(p, ns=(past, past))
    return _inodes(folder)


def _same_task(a, b) -> bool:
    return (a.model_config, a.special_ids, a.options, a.features, a.data) == \
        (b.model_config, b.special_ids, b.options, b.features, b.data)


@pytest.fixture(scope="module")
def clean(world, tmp_path_factory):
    """An uninterrupted preparation: (task, summary, every file it wrote)."""
    data, store = world
    run = tmp_path_factory.mktemp("clean") / "run"
    task, summary = prepare_pretraining(store, data, run, preset="tiny")
    return task, summary, _files(run)


@pytest.mark.parametrize("split", ["valid", "train"])
def test_a_preparation_killed_mid_split_resumes_and_redoes_only_the_partial_split(world, clean, tmp_path, split):
    data, store = world
    clean_task, clean_summary, clean_files = clean
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _KILLED_AT, str(store), str(data), str(run), split], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = run / "data" / split
    assert (partial / "input_ids.npy").is_file() and not (partial / "summary.json").exists()
    assert not (run / "config.yaml").exists()
    complete_train = _aged(run / "data" / "train") if split == "valid" else {}

    task, summary = prepare_pretraining(store, data, run, preset="tiny")      # the re-run into the same --out
    assert summary == clean_summary and _same_task(task, clean_task)
    assert _files(run) == clean_files                                         # as if never stopped, byte for byte
    if split == "valid":                                                      # the complete split was kept as is
        assert _inodes(run / "data" / "train") == complete_train

    # complete now: a third start rewrites nothing, and --resume (no config.yaml yet) does the same
    written = {name: _aged(run / "data" / name) for name in ("train", "valid")}
    task, summary = prepare_pretraining(store, data, run, preset="tiny", resume=True)
    assert summary == clean_summary and _same_task(task, clean_task)
    assert {name: _inodes(run / "data" / name) for name in ("train", "valid")} == written


def test_a_stopped_preparation_with_other_inputs_is_prepared_again(world, tmp_path):
    data, store = world
    options = PretrainOptions(max_answers=4)
    reference, ref_summary = prepare_pretraining(store, data, tmp_path / "reference", preset="tiny", options=options)
    run = tmp_path / "run"
    prepare_pretraining(store, data, run, preset="tiny")                      # stopped before training started
    (run / "data" / "valid" / "summary.json").unlink()
    task, summary = prepare_pretraining(store, data, run, preset="tiny", options=options)
    assert summary == ref_summary and _same_task(task, reference)
    assert _files(run) == _files(tmp_path / "reference")
    assert len(json.loads((run / "answers.json").read_text())) == 4


def test_a_changed_annotation_file_is_prepared_again(world, tmp_path):
    import shutil

    data, store = world
    copy = tmp_path / "data"
    shutil.copytree(data, copy, symlinks=True)
    run = tmp_path / "run"
    prepare_pretraining(store, copy, run, preset="tiny")
    kept = _aged(run / "data" / "train")
    prepare_pretraining(store, copy, run, preset="tiny")
    assert _inodes(run / "data" / "train") == kept
    annotation = next(p for p in sorted(copy.rglob("*.json")) if "images" not in p.parts)
    os.utime(annotation, ns=(annotation.stat().st_atime_ns, annotation.stat().st_mtime_ns + 10**9))
    prepare_pretraining(store, copy, run, preset="tiny")
    assert _inodes(run / "data" / "train") != kept
