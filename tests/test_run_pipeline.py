"""`lxmert-pipeline run`: the whole pipeline as one Dask graph on a tiny config."""

from __future__ import annotations

import json

import pytest
import yaml

from workflows.cli import main
from pipeline.synth.generate import generate
from workflows.pipeline_config import parse_pipeline_config

TINY = {
    "workers": 2,
    "extract": {"preset": "tiny", "weights": "random", "batch_size": 4, "shard_size": 60},
    "pretrain": {"preset": "tiny", "train": {"steps": 4, "batch_size": 16, "checkpoint_every": 2}},
    "finetune": {
        "vqa": {"task": "vqa", "init": "pretrain", "train": {"steps": 3, "batch_size": 8}},
        "gqa-scratch": {"task": "gqa", "init": "none", "preset": "tiny", "train": {"steps": 3, "batch_size": 8}},
        "nlvr2": {"task": "nlvr2", "init": "pretrain", "language_only": True, "train": {"steps": 3, "batch_size": 8}},
    },
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate(root, images=120, seed=5, workers=1)
    return root


def _config(tmp_path, world, **changes):
    values = {"data": str(world), "out": str(tmp_path / "out"), **json.loads(json.dumps(TINY)), **changes}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_run_chains_every_stage_then_resumes_and_refuses_changed_settings(tmp_path, world, capsys):
    config = _config(tmp_path, world)
    assert main(["run", "--config", str(config)]) == 0
    out = tmp_path / "out"
    assert (out / "features" / "manifest.json").is_file() and (out / "pretrain" / "final" / "config.json").is_file()
    for name, task, split, keys in (("vqa", "vqa", "val2014", {"overall", "yes/no", "number", "other"}),
                                    ("gqa-scratch", "gqa", "testdev", {"accuracy", "consistency", "validity"}),
                                    ("nlvr2", "nlvr2", "dev", {"accuracy", "consistency"})):
        results = json.loads((out / "finetune" / name / "evaluation" / split / "results.json").read_text())
        assert results["task"] == task and keys <= set(results)
    record = yaml.safe_load((out / "finetune" / "vqa" / "config.yaml").read_text())
    assert record["task_options"]["init"]["answers_matched"] >= 1   # rows carried over from the pretraining head
    printed = capsys.readouterr().out
    assert "evaluate vqa val2014: overall" in printed
    # the fine-tunings go out in the config's order, one per worker thread (2 here): the third
    # is submitted only when one of the first two has ended
    first, second, third = yaml.safe_load(config.read_text())["finetune"]
    started = {n: (out / "finetune" / n / "pipeline-stage.json").stat().st_mtime_ns for n in TINY["finetune"]}
    ended = {n: (out / "finetune" / n / "final" / "config.json").stat().st_mtime_ns for n in TINY["finetune"]}
    assert started[third] >= min(ended[first], ended[second])

    # predict: the run's own detector (random, seeded) extracts a new image's regions on the spot
    image = next((world / "images").glob("COCO_val2014_*.jpg"))
    picture = tmp_path / "attention.png"
    assert main(["predict", "--run", str(out / "finetune" / "vqa"), "--image", str(image), "--question",
                 "what color is the circle?", "--top", "3", "--picture", str(picture)]) == 0
    answered = capsys.readouterr().out.splitlines()
    assert answered[0] == "vqa: what color is the circle?" and len(answered) == 4 and picture.is_file()
    with pytest.raises(SystemExit) as usage:
        main(["predict", "--run", str(out / "finetune" / "nlvr2"), "--image", str(image), "--question", "Two stars."])
    assert usage.value.code == 2 and "twice" in capsys.readouterr().err

    final = out / "finetune" / "vqa" / "final" / "model.safetensors"
    made = final.stat().st_mtime_ns
    assert main(["run", "--config", str(config)]) == 0          # everything complete: nothing is redone
    assert final.stat().st_mtime_ns == made

    changed = json.loads(json.dumps(TINY))
    changed["finetune"]["vqa"]["train"]["steps"] = 5
    config = _config(tmp_path, world, finetune=changed["finetune"])
    assert main(["run", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "finetune/vqa" in err and "section.train.steps" in err and "Traceback" not in err


@pytest.mark.parametrize("values, message", [
    ({"out": "x"}, "`data:` is required"),
    ({"data": "d", "out": "x", "finetune": {"a": {"task": "vqa"}}}, "no `pretrain:` section"),
    ({"data": "d", "out": "x", "finetune": {"a": {"task": "coco"}}}, "must be one of"),
    ({"data": "d", "out": "x", "pretrain": {"presett": "tiny"}}, "unknown key(s) ['presett'] in `pretrain`"),
    ({"data": "d", "out": "x", "evaluate": {"b": ["dev"]}}, "names no run"),
])
def test_config_mistakes_are_named(values, message):
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError) as err:
        parse_pipeline_config(values, "pipeline.yaml")
    assert message in str(err.value) and "pipeline.yaml" in str(err.value)


def test_the_shipped_sample_config_is_valid():
    from pathlib import Path

    import workflows
    from workflows.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(Path(workflows.__file__).parent / "pipeline.yaml")
    assert set(cfg.finetune) == {"vqa", "gqa", "nlvr2"} and cfg.pretrain["preset"] == "base"
