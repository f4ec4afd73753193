"""Default loop settings of a fine-tuning run (the --config file and flags win).

- Networks of the paper's width (hidden 768, `base` or any hub/original checkpoint): the
  reference recipes, airsplay/lxmert `run/{vqa,gqa,nlvr2}_finetune.bash`
  (docs/reference/lxmert.md §1.8): 4 epochs, batch 32, BertAdam, lr 5e-5 (GQA 1e-5), warm-up 0.1, linear
  decay, gradient clip 5.0; the best validation accuracy is kept (BEST.pth).
- Narrow networks (`tiny`, `small`, demo-size models on synthetic worlds, on a CPU): the
  reference lr moves a narrow model too little to learn anything in a few epochs. AdamW
  (bias correction matters in runs of a few hundred steps) at lr 1e-3 with a short warm-up,
  bf16 autocast where it is measured faster on this CPU (as pretraining's recipe). NLVR2 at
  3e-4: at 1e-3 its head settles on the majority label within the first epoch, for every
  model; VQA and GQA learn as well at either (research/2026-11-27-nlvr2-truncated-statements.md).
"""

from __future__ import annotations

from typing import Any

from pipeline.training.precision import fast_precision

PAPER_HIDDEN_SIZE = 768

REFERENCE_LR = {"vqa": 5e-5, "gqa": 1e-5, "nlvr2": 5e-5}
REFERENCE_RECIPE: dict[str, Any] = dict(epochs=4, batch_size=32, optimizer="bert", weight_decay=0.01, warmup=0.1,
                                        clip_norm=5.0, best_metric="accuracy", val_batch_size=256)
SMALL_MODEL_LR = {"vqa": 1e-3, "gqa": 1e-3, "nlvr2": 3e-4}
SMALL_MODEL_RECIPE: dict[str, Any] = dict(epochs=10, batch_size=32, optimizer="adamw", weight_decay=0.01,
                                          warmup=0.05, clip_norm=5.0, best_metric="accuracy", val_batch_size=256)


def recipe(task: str, hidden_size: int) -> dict[str, Any]:
    """`TrainConfig` fields for fine-tuning a `hidden_size`-wide network on `task`."""
    if hidden_size >= PAPER_HIDDEN_SIZE:
        return dict(REFERENCE_RECIPE, lr=REFERENCE_LR[task])
    return dict(SMALL_MODEL_RECIPE, lr=SMALL_MODEL_LR[task], precision=fast_precision())
