"""A small synthetic world with ground-truth features, and the model directory a
pretraining run leaves for fine-tuning to start from."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model import LxmertForPreTraining, save_pretrained
from model.tokenizer import train_wordpiece
from pipeline.features import FeatureStore
from pipeline.finetune.splits import read_vqa_split
from pipeline.inputs import config_for_store
from pipeline.synth.generate import generate
from pipeline.synth.oracle import write_oracle_store


def make_world(directory: Path, images: int = 160, seed: int = 1, feature_dim: int = 32) -> tuple[Path, Path]:
    """(data root, oracle feature store) of a synthetic world with `images` images."""
    world = directory / "world"
    summary = generate(world, images=images, seed=seed, workers=1)
    (world / "synth_summary.json").write_text(json.dumps(summary))
    return world, write_oracle_store(world, directory / "oracle", feature_dim=feature_dim)


def pretraining_directory(directory: Path, world: Path, store: Path, answers: list[str], seed: int = 0) -> Path:
    """What a pretraining run's final/ holds: LxmertForPreTraining (tiny, its answer table
    named in config.answers) + the tokenizer files."""
    tokenizer = train_wordpiece([q.sentence for q in read_vqa_split(world, "train2014")], vocab_size=400)
    config = config_for_store(FeatureStore(store).metadata, "tiny", vocab_size=tokenizer.vocab_size,
                              num_qa_labels=len(answers), answers=list(answers))
    torch.manual_seed(seed)
    model = LxmertForPreTraining(config)
    save_pretrained(model, directory)
    tokenizer.save(directory)
    return directory
