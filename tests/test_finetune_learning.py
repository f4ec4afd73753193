"""Fine-tuning learns to look: on a 2000-image synthetic world with ground-truth features, a
small LXMERT trained from scratch on VQA beats the best question-only guesser (slow: minutes)."""

from __future__ import annotations

import pytest
import torch

from pipeline.stages.finetune import FinetuneOptions, finetune
from pipeline.readers import DataRoot
from pipeline.synth.baselines import vqa_baseline
from pipeline.training import RunDir, TrainConfig
from tests.helpers.finetune_world import make_world


@pytest.mark.slow
def test_vqa_from_scratch_beats_the_question_only_baseline(tmp_path):
    data, store = make_world(tmp_path, images=2000, seed=0, feature_dim=64)
    baseline = vqa_baseline(DataRoot(data))["question_only"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = FinetuneOptions("vqa", str(store), str(data), preset="tiny",
                                  model={"hidden_size": 64, "intermediate_size": 128})
        config = TrainConfig(epochs=30, batch_size=32, optimizer="adamw", lr=1e-3, warmup=0.05, clip_norm=5.0,
                             best_metric="accuracy", val_batch_size=256, progress=False, log_every=50)
        finetune(options, tmp_path / "run", layers=[config.to_dict()])
    finally:
        torch.set_num_threads(threads)
    best = RunDir(tmp_path / "run").best_record()["value"]
    assert best > baseline + 3, (best, baseline)
