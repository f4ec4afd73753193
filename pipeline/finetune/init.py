"""Where a fine-tuning model's weights start: nothing (from scratch), a pretraining run, a
transformers-format directory, or an original airsplay/lxmert checkpoint.

`--init` is resolved once (`resolve_init`) into a small picklable `ModelInit`; every rank
builds its model from it (`ModelInit.build`). VQA/GQA heads get the rows of the source's
answer head by answer string, as LXMERT's `load_lxmert_qa` (docs/reference/lxmert.md §1.4;
unmatched rows start at 0); NLVR2 takes the backbone only (`--loadLXMERT` drops the answer
head), its pair head starts fresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import LoadReport, LxmertConfig, load_pretrained
from model.checkpoints import CONFIG_NAME
from model.errors import CheckpointError
from pipeline.errors import PipelineError

SCRATCH, RUN, DIRECTORY, CHECKPOINT = "scratch", "run", "directory", "checkpoint"


@dataclass(frozen=True)
class ModelInit:
    kind: str                                   # scratch | run | directory | checkpoint
    weights: str | None = None                  # RUN/final, a transformers directory, or a .pth/.bin file
    source: str | None = None                   # what the user named (a run, not its final/)
    model_config: dict[str, Any] | None = None  # scratch: the whole network
    source_answers: list[str] | None = None     # an original checkpoint's answer names (--init-answers)
    config_overrides: dict[str, Any] = field(default_factory=dict)   # not in an original's tensors

    def build(self, model_class, answers: list[str] | None):
        """(model, LoadReport or None for scratch). Errors name the checkpoint."""
        if self.kind == SCRATCH:
            return model_class(LxmertConfig.from_dict(self.model_config)), None
        try:
            return load_pretrained(self.weights, model_class, answers=answers, source_answers=self.source_answers,
                                   return_report=True, **self.config_overrides)
        except CheckpointError as err:
            hint = ""
            if "give the answer names" in err.message:
                hint = (" (an original checkpoint does not name its answers: pass --init-answers with LXMERT's "
                        "data/lxmert/all_ans.json)")
            raise PipelineError(str(err) + hint) from None

    def describe(self, report: LoadReport | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": self.source, "weights": self.weights}
        if self.source_answers is not None:
            out["source_answers"] = len(self.source_answers)
        if report is not None:
            out["loaded"] = report.summary()
            if report.answers_total is not None:
                out["answers_matched"] = report.answers_matched
                out["answers_total"] = report.answers_total
        return out


def resolve_init(init: str | os.PathLike | None, *, init_answers: list[str] | None = None,
                 num_attention_heads: int | None = None) -> ModelInit:
    """`--init` as a `ModelInit` (scratch needs its `model_config` filled in by the caller).

    A run directory (config.yaml) starts from its final/ model; a directory with config.json is
    a transformers-format checkpoint (a run's checkpoints/step-N/ too); a file is an original
    LXMERT checkpoint, whose head count is not in its tensors (`num_attention_heads`).
    """
    if init is None or str(init).lower() == "none":
        return ModelInit(SCRATCH)
    path = Path(init)
    if path.is_dir():
        if (path / "config.yaml").is_file() and not (path / CONFIG_NAME).is_file():
            final = path / "final"
            if not (final / CONFIG_NAME).is_file():
                raise PipelineError("the run has no final/ model (not finished?); resume it, or pass one of its "
                                    "checkpoints/step-*/ directories as --init", path)
            return ModelInit(RUN, str(final.resolve()), str(path.resolve()), source_answers=init_answers)
        if (path / CONFIG_NAME).is_file():
            return ModelInit(DIRECTORY, str(path.resolve()), str(path.resolve()), source_answers=init_answers)
        raise PipelineError("not a run (config.yaml + final/), a transformers-format directory (config.json) "
                            "or a checkpoint file", path)
    if path.is_file():
        overrides = {} if num_attention_heads is None else {"num_attention_heads": num_attention_heads}
        return ModelInit(CHECKPOINT, str(path.resolve()), str(path.resolve()), source_answers=init_answers,
                         config_overrides=overrides)
    raise PipelineError("no such run, checkpoint directory or checkpoint file", path)

