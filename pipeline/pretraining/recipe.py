"""Default training settings of a pretraining run, by model preset (flags and --config win).

- `base` (and any full-size preset): the reference recipe, `run/lxmert_pretrain.bash` of
  airsplay/lxmert: batch 256, BertAdam, lr 1e-4, 5% warm-up then linear decay, global
  gradient clip 1.0, 20 epochs (docs/reference/lxmert.md §1.6).
- the small presets (`tiny`, `small`, `demo`): a CPU recipe for synthetic worlds of a few
  thousand images: AdamW (bias correction matters in runs of a few hundred steps), a larger
  lr for the narrow model, bf16 autocast where this CPU's bf16 matmuls are measured clearly
  faster than fp32 (`pipeline/training/precision.py`), else fp32.
"""

from __future__ import annotations

from typing import Any

from pipeline.training.precision import fast_precision

REFERENCE_RECIPE: dict[str, Any] = dict(epochs=20, batch_size=256, optimizer="bert", lr=1e-4, warmup=0.05,
                                        clip_norm=1.0, weight_decay=0.01, precision="fp32", log_every=100)

SMALL_PRESETS = ("tiny", "small", "demo")
# 8 epochs of a 2000-image world (13k sentences) take ~5 minutes with the demo preset
CPU_RECIPE: dict[str, Any] = dict(epochs=8, batch_size=64, optimizer="adamw", lr=1e-3, warmup=0.05, clip_norm=1.0,
                                  weight_decay=0.01, log_every=50)


def recipe(preset: str, device: str = "cpu") -> dict[str, Any]:
    """`TrainConfig` fields for a run of `preset` on `device` (before --config and flags)."""
    if preset not in SMALL_PRESETS:
        return dict(REFERENCE_RECIPE, device=device)
    return dict(CPU_RECIPE, device=device, precision=fast_precision(device))
