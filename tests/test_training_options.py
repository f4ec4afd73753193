"""Training settings: recipe, then --config file, then flags; bad files are one clear line."""

from __future__ import annotations

import argparse

import pytest

from pipeline.errors import PipelineError, UsageError
from pipeline.training import TrainConfig
from workflows.commands.training_options import add_training_arguments, flag_train_settings, read_options_file


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    return parser.parse_args(["--out", "run", *argv])


def train_config(args, recipe, file_options):
    return TrainConfig.from_layers(recipe, file_options.get("train", {}), flag_train_settings(args))


def test_flags_beat_the_file_which_beats_the_recipe(tmp_path):
    path = tmp_path / "opts.yaml"
    path.write_text("train:\n  lr: 0.001\n  steps: 7\n  batch_size: 8\ntask:\n  mask_rate: 0.2\n")
    options = read_options_file(str(path))
    assert options["task"] == {"mask_rate": 0.2}
    recipe = {"epochs": 4, "batch_size": 32, "lr": 5e-5, "clip_norm": 5.0}
    config = train_config(parse("--lr", "0.01"), recipe, options)
    assert (config.steps, config.epochs, config.batch_size, config.lr, config.clip_norm) == (7, None, 8, 0.01, 5.0)
    config = train_config(parse("--epochs", "2", "--no-progress"), recipe, options)
    assert (config.steps, config.epochs, config.progress) == (None, 2, False)


def test_missing_length_and_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="--steps N or --epochs N"):
        train_config(parse(), {"lr": 1e-4}, {"train": {}, "task": {}})
    with pytest.raises(UsageError, match="precision"):
        train_config(parse("--steps", "3"), {"precision": "int4"}, {"train": {}, "task": {}})


@pytest.mark.parametrize("text, message", [("train: [1, 2]\n", "must be a mapping"),
                                           ("model: {}\n", "`train:` and/or `task:`"),
                                           ("train: {lr: [\n", "not valid YAML")])
def test_bad_options_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "opts.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message) as err:
        read_options_file(str(path))
    assert str(path) in str(err.value)


def test_small_recipes_autocast_bf16_only_where_it_is_fast(monkeypatch, tmp_path):
    from pipeline.finetune.recipe import recipe as finetune_recipe
    from pipeline.pretraining.recipe import recipe as pretrain_recipe
    from pipeline.training import precision

    # flags, measured bf16/fp32 matmul rate -> choice (0.5x: the Xeon whose flags say bf16)
    for native, speedup, on_cpu in ((True, 4.4, "bf16"), (True, 0.5, "fp32"), (False, 4.4, "fp32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        monkeypatch.setattr(precision, "cpu_bf16_matmul_speedup", lambda speedup=speedup: speedup)
        monkeypatch.setenv("LXMERT_PIPELINE_CACHE", str(tmp_path / f"{native}-{speedup}"))   # a fresh machine
        assert precision.fast_precision("cpu") == on_cpu and precision.fast_precision("cuda:0") == "bf16"
        assert pretrain_recipe("demo")["precision"] == on_cpu and finetune_recipe("vqa", 128)["precision"] == on_cpu
        assert pretrain_recipe("base")["precision"] == "fp32" and "precision" not in finetune_recipe("vqa", 768)
