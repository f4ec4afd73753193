"""A stage directory's record, `pipeline-stage.json`: the fingerprint of the settings its
outputs were made with. One rule decides what a re-run does with a stage:

- outputs complete and the fingerprint matches: skip it;
- started but not complete (and the fingerprint matches): run it again, which resumes;
- the settings changed, or complete outputs without a record: refuse, naming the directory
  (delete it or choose another `out:`), never a silent mix of old and new outputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

STAGE_RECORD = "pipeline-stage.json"


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim(directory: Path, settings: dict[str, Any], complete: bool) -> bool:
    """True when the stage must run (fresh or resumed); False when its outputs are complete
    and were made with these settings. Writes the record before the stage runs."""
    from pipeline.atomic import write_json

    record = directory / STAGE_RECORD
    made_with = fingerprint(settings)
    if record.is_file():
        made = json.loads(record.read_text(encoding="utf-8"))
        if made.get("fingerprint") != made_with:
            changed = sorted(_changed_keys(made.get("settings") or {}, json.loads(json.dumps(settings, default=str))))
            raise PipelineError(f"this stage's outputs were made with other settings (changed: "
                                f"{', '.join(changed) or 'unknown'}); delete the directory or choose another "
                                f"`out:`", directory)
        if complete:
            return False
    elif complete:
        raise PipelineError(f"holds outputs this pipeline did not make (no {STAGE_RECORD}); delete the "
                            "directory or choose another `out:`", directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(record, {"fingerprint": made_with, "settings": settings})
    return True


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]
