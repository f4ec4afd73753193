"""`lxmert-pipeline demo --quick` end to end, as the README's quick start runs it: the table,
the pictures, a run config `run` accepts, and a re-run that resumes instead of redoing."""

import json

import pytest

from workflows.cli import main as cli
from workflows.demo import MAIN_METRICS, TASK_SPLITS, VARIANTS
from workflows.pipeline_config import load_pipeline_config


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert cli(["demo", "--out", str(out), "--quick"]) == 0
    return out


def test_quick_demo_writes_the_ablation_table_and_pictures(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    for task, split in TASK_SPLITS.items():
        assert set(VARIANTS) <= set(results[task])
        for variant in VARIANTS:
            scores = results[task][variant]
            assert set(scores) == set(MAIN_METRICS[task])
            headline = scores["overall" if task == "vqa" else "accuracy"]
            assert 0.0 <= headline <= 100.0
            assert (quick_demo / "runs" / "finetune" / f"{task}-{variant.replace('_', '-')}" / "evaluation" / split
                    / "results.json").is_file()
        assert results[task]["question_only"]["majority answer per question"] > 0
        # how sure the table is: paired-bootstrap intervals over the split's questions
        difference = results["differences"][task]["pretrained - scratch"]
        metric = "overall" if task == "vqa" else "accuracy"
        gap = results[task]["pretrained"][metric] - results[task]["scratch"][metric]
        assert difference["points"] == pytest.approx(gap, abs=0.02)
        assert difference["low"] <= difference["points"] <= difference["high"] and difference["questions"] > 0
    table = (quick_demo / "results.md").read_text()
    assert "| LXMERT, pretrained + fine-tuned |" in table and "| VQA val2014 | GQA testdev | NLVR2 dev |" in table
    assert "paired bootstrap" in table and "| LXMERT, pretrained + fine-tuned vs LXMERT, no pretraining |" in table
    pictures = {p.name for p in (quick_demo / "pictures").glob("*.png")}
    assert {"detections.png", "pretrain_losses.png", "cross_attention.png", "finetune_vqa.png", "finetune_gqa.png",
            "finetune_nlvr2.png"} <= pictures
    assert all((quick_demo / "pictures" / name).stat().st_size > 10_000 for name in pictures)


def test_the_demo_config_is_a_run_config_and_a_rerun_resumes(quick_demo, caplog):
    cfg = load_pipeline_config(quick_demo / "pipeline.yaml")
    assert len(cfg.finetune) == 9 and cfg.detector is not None and cfg.pretrain is not None
    before = (quick_demo / "results.json").read_text()
    models = [quick_demo / "runs" / "detector" / "final" / "model.safetensors",
              quick_demo / "runs" / "pretrain" / "final" / "model.safetensors",
              quick_demo / "runs" / "finetune" / "vqa-pretrained" / "final" / "model.safetensors"]
    stamps = [m.stat().st_mtime_ns for m in models]
    with caplog.at_level("INFO"):
        assert cli(["demo", "--out", str(quick_demo), "--quick"]) == 0
    assert "world complete, reused" in caplog.text
    assert [m.stat().st_mtime_ns for m in models] == stamps        # nothing was trained again
    after = json.loads((quick_demo / "results.json").read_text())
    assert {t: after[t] for t in TASK_SPLITS} == {t: json.loads(before)[t] for t in TASK_SPLITS}


def test_a_demo_directory_of_another_world_is_refused(quick_demo, capsys):
    assert cli(["demo", "--out", str(quick_demo), "--quick", "--seed", "7"]) == 1
    err = capsys.readouterr().err
    assert "world" in err and "another size or seed" in err
