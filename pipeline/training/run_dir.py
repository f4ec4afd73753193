"""The run directory: config.yaml, metrics.jsonl, checkpoints/, final/.

    RUN/config.yaml                  everything needed to reproduce the run
    RUN/metrics.jsonl                one JSON line per logging step / validation
    RUN/loop.jsonl                   how the loop ran in each logging window: seconds,
                                     examples/s, the share spent waiting for data, (CUDA) peak
                                     memory, (fp16) loss scale and skipped steps
    RUN/checkpoints/step-0000100/    model.safetensors + config.json + resume.pt
    RUN/final/                       the last checkpoint of a finished run
    RUN/best/                        the model of the best validation so far (with best.json),
                                     when the run names a `best_metric`

Checkpoint directories are published whole (`pipeline.atomic.publish_directory`), so a
directory named `step-*`, `final` or `best` is complete. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.atomic import TMP_MARK, atomic_open, publish_directory, remove_stale_temporaries
from pipeline.errors import PipelineError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LOOP = "loop.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
BEST = "best"
BEST_RECORD = "best.json"
RESUME = "resume.pt"


def _step_name(step: int) -> str:
    return f"step-{step:07d}"


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- setup ------------------------------------------------------------------------------
    def check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-probe{TMP_MARK}{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise PipelineError(f"output directory is not writable ({err.strerror or err})", self.path) from None

    def has_run(self) -> bool:
        return (self.path / CONFIG).exists()

    def read_config(self) -> dict[str, Any]:
        try:
            with open(self.path / CONFIG, encoding="utf-8") as fh:
                return yaml.safe_load(fh)
        except (OSError, yaml.YAMLError) as err:
            raise PipelineError(f"cannot read the run's configuration: {err}", self.path / CONFIG) from None

    def write_config(self, config: dict[str, Any]) -> None:
        with atomic_open(self.path / CONFIG, "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)

    # -- metrics ----------------------------------------------------------------------------
    # metrics.jsonl holds what was computed (the same for a resumed run as for an
    # uninterrupted one, but for examples_per_s); loop.jsonl how fast and how smoothly
    def log(self, record: dict[str, Any], name: str = METRICS) -> None:
        with open(self.path / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def metrics(self, name: str = METRICS) -> list[dict[str, Any]]:
        path = self.path / name
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def loop_records(self) -> list[dict[str, Any]]:
        """loop.jsonl: one line per training metrics line (see the module's docstring)."""
        return self.metrics(LOOP)

    def truncate_metrics(self, step: int) -> None:
        """Drop lines logged after `step`: a resumed run's log reads like an uninterrupted one."""
        for name in (METRICS, LOOP):
            self._truncate(self.path / name, step)

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        if not path.exists():
            return
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:   # a line cut by the kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.writelines(kept)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return []
        done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and TMP_MARK not in p.name]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save_checkpoint(self, step: int, write: Callable[[Path], None], keep: int) -> Path:
        """Publish what `write(directory)` writes as checkpoints/step-N/; keep the newest `keep`."""
        final = self.path / CHECKPOINTS / _step_name(step)
        with publish_directory(final) as tmp:
            write(tmp)
        for old in self.checkpoints()[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def publish_final(self, checkpoint: Path) -> Path:
        """A copy of `checkpoint` as RUN/final/."""
        final = self.path / FINAL
        with publish_directory(final) as tmp:
            shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
        return final

    # -- best validation ------------------------------------------------------------------
    def best_record(self) -> dict[str, Any] | None:
        """The best.json of RUN/best/ (metric, value, step, epoch), or None before any."""
        path = self.path / BEST / BEST_RECORD
        if not path.is_file():
            return None
        with open(path, encoding="utf-8") as fh:
            return json.loads(fh.read())

    def save_best(self, write: Callable[[Path], None], record: dict[str, Any]) -> Path:
        """Replace RUN/best/ by what `write(directory)` writes, plus best.json = `record`."""
        best = self.path / BEST
        with publish_directory(best) as tmp:
            write(tmp)
            (tmp / BEST_RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")
        return best

    def remove_stale(self) -> None:
        """Temporaries left by a killed writer."""
        for root in (self.path, self.path / CHECKPOINTS):
            remove_stale_temporaries(root)
