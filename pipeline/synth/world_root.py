"""A whole synthetic data root as `synth` writes it: the files, the question-only baselines,
`synth_summary.json` and the root's README (shared by the `synth` command and the demo)."""

from __future__ import annotations

import os

from pipeline.atomic import atomic_open, write_json
from pipeline.readers import DataRoot
from pipeline.synth.baselines import question_only_baselines
from pipeline.synth.generate import generate
from pipeline.synth.readme import render_readme
from pipeline.synth.world import WorldConfig

SUMMARY = "synth_summary.json"


def write_world(out: str | os.PathLike, *, images: int = 1000, seed: int = 0, cfg: WorldConfig | None = None,
                workers: int | None = None, baselines: bool = True) -> dict:
    """Write the world to `out`; returns its summary (counts, timings, baselines)."""
    summary = generate(out, images=images, seed=seed, cfg=cfg or WorldConfig(), workers=workers)
    if baselines:
        summary["baselines"] = question_only_baselines(DataRoot(out))
    write_json(os.path.join(out, SUMMARY), summary)
    with atomic_open(os.path.join(out, "README.md"), encoding="utf-8") as fh:
        fh.write(render_readme(summary))
    return summary
