"""Detector weights: the public bottom-up-attention checkpoints and the project's own.

Formats read (docs/reference/detector.md §2), none of them by executing code from the file:
- detectron2 pickle (`faster_rcnn_from_caffe_attr.pkl`, AIR): {"model": {name: ndarray}, maybe
  "__author__", "matching_heuristics"}; read with a restricted unpickler that builds only
  numpy arrays/dtypes/scalars and plain containers (latin1, as detectron2 reads them).
  Anything else (os.system, builtins.eval, ...) is refused before it is called.
- torch pickle (`unc-nlp/frcnn-vg-finetuned/pytorch_model.bin`, HF): a flat state_dict, read
  with `torch.load(weights_only=True)`; {"model": ...} wrappers are unwrapped.
- safetensors (`model.safetensors`, this project's), with `config.yaml` beside it.

Key check is strict: missing, unexpected and mis-shaped keys are all listed in one report.
Tolerated by design: `num_batches_tracked` (FrozenBN has none; the HF file has 104), and
`proposal_generator.anchor_generator.cell_anchors.0` (HF; anchors come from the config, so
the file's are compared with them and a mismatch is an error, e.g. a BUA checkpoint).
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from detector.config import DetectorConfig
# the project's one checkpoint error (docs/files.md), raised and re-exported here
from model.errors import CheckpointError, refused_pickle, torch_load_reason

CELL_ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"


def weights_file(path: str | os.PathLike) -> Path:
    """The weights a user means by `path`: `path/model.safetensors` for a checkpoint folder,
    else `path` itself; a folder without that file is a CheckpointError naming the folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"no {WEIGHTS_NAME} in the checkpoint folder", path)
    return path / WEIGHTS_NAME


# -- restricted unpickling ---------------------------------------------------------------

def _resolve_allowed(module: str, name: str):
    """The only globals a weights pickle may name; None for everything else."""
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        from numpy._core import multiarray

        return getattr(multiarray, name)
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType"):   # dtype classes of numpy >= 1.25
        import numpy.dtypes

        found = getattr(numpy.dtypes, name, None)
        return found if isinstance(found, type) and issubclass(found, np.dtype) else None
    if (module, name) == ("collections", "OrderedDict"):
        return OrderedDict
    if (module, name) == ("_codecs", "encode"):    # how protocol-2 pickles spell bytes
        return _latin1_encode
    return None


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode(encoding)


class RestrictedUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dtypes, scalars and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        found = _resolve_allowed(module, name)
        if found is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a weights pickle may only contain numpy "
                f"arrays and plain containers")
        return found


def load_pickle_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = RestrictedUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"not a plain weights pickle: {err}", path) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"unreadable pickle ({type(err).__name__}: {err})", path) from None
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise CheckpointError(f"expected a dict of arrays, found {type(data).__name__}", path)
    return data


# -- reading any supported file ----------------------------------------------------------

def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .pkl / .bin / .pth / .pt / .safetensors file or a checkpoint dir."""
    path = weights_file(path)
    if not path.is_file():
        raise CheckpointError("no such weights file", path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise CheckpointError("empty file", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorsError is not importable in every version
            raise CheckpointError(f"unreadable safetensors file: {err}", path) from None
    if head[:2] == b"PK":   # zip container: torch.save since 1.6
        raw = _torch_load(path)
    elif path.suffix == ".pkl" or head[:1] == b"\x80":
        raw = load_pickle_weights(path)
    else:
        raw = _torch_load(path)
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]
    state: dict[str, torch.Tensor] = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise CheckpointError(f"non-string key {name!r}", path)
        if isinstance(value, np.ndarray):
            state[name] = torch.from_numpy(np.ascontiguousarray(value))
        elif isinstance(value, torch.Tensor):
            state[name] = value
        elif isinstance(value, (int, float, np.number)):
            state[name] = torch.tensor(value)
        else:
            raise CheckpointError(f"{name}: expected an array, found {type(value).__name__}", path)
    return state


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(refused_pickle(err) or f"not a torch weights file ({torch_load_reason(err)})",
                              path) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"unreadable torch file: {err}", path) from None


# -- strict matching ----------------------------------------------------------------------

@dataclass
class KeyReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)   # key, file, model
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 8) -> str:
        parts = []
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
                parts.append(f"{len(items)} {title} key(s): {shown}")
        if self.mismatched:
            shown = "; ".join(f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched[:limit])
            more = f"; ... ({len(self.mismatched) - limit} more)" if len(self.mismatched) > limit else ""
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {shown}{more}")
        return " | ".join(parts) if parts else "all keys match"


def match_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], KeyReport]:
    """Compare a file's tensors with the model's state_dict: -> (tensors to load, report)."""
    expected = model.state_dict()
    report = KeyReport()
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            report.ignored.append(key)
            continue
        if key == CELL_ANCHORS_KEY:
            report.ignored.append(key)
            ours = model.proposal_generator.anchor_generator.cell_anchors_0.cpu()
            if tuple(value.shape) != tuple(ours.shape) or not torch.allclose(value.float(), ours, atol=0.05):
                report.mismatched.append((key + " (values differ from the config's anchors)",
                                          tuple(value.shape), tuple(ours.shape)))
            continue
        if key not in expected:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(expected[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(expected[key].shape)))
            continue
        usable[key] = value
    for key in expected:
        if key not in usable and not key.endswith("num_batches_tracked") \
                and key not in {k for k, _, _ in report.mismatched}:
            report.missing.append(key)
    return usable, report


def check_weights(cfg: DetectorConfig, path: str | os.PathLike) -> KeyReport:
    """Strict key/shape check of a file against a config without building real tensors
    (the model is built on the meta device); raises CheckpointError. For preflight checks."""
    from detector.rcnn import GeneralizedRCNN

    with torch.device("meta"):
        model = GeneralizedRCNN(cfg)
    state = read_state(path)
    state.pop(CELL_ANCHORS_KEY, None)
    _, report = match_state(model, state)
    if not report.ok:
        raise CheckpointError(f"does not fit the {cfg.name} detector: {report.format()}", path)
    return report


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> KeyReport:
    """Load a checkpoint file into `model` with the strict check; raises CheckpointError."""
    state = read_state(path)
    usable, report = match_state(model, state)
    if not report.ok:
        raise CheckpointError(f"does not fit the {getattr(model, 'cfg', None) and model.cfg.name} "
                              f"detector: {report.format()}", path)
    model_state = model.state_dict()
    with torch.no_grad():
        for key, value in usable.items():
            model_state[key].copy_(value.to(model_state[key].dtype))
    return report


# -- the project's own checkpoints --------------------------------------------------------

def save_detector(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """directory/config.yaml + directory/model.safetensors.

    Plain files: a caller that needs the directory to appear complete or not at all writes
    into a temporary directory and renames it (the pipeline does, docs/files.md).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "detector": model.cfg.name})
    model.cfg.to_yaml(directory / CONFIG_NAME)
    return directory


def load_detector(directory: str | os.PathLike) -> torch.nn.Module:
    from detector.rcnn import GeneralizedRCNN

    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} beside the weights", directory)
    try:
        cfg = DetectorConfig.from_yaml(cfg_path)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"bad detector config: {err}", cfg_path) from None
    model = GeneralizedRCNN(cfg)
    load_weights(model, directory / WEIGHTS_NAME)
    return model


def checkpoint_config(path: str | os.PathLike) -> DetectorConfig | None:
    """The config saved beside a project checkpoint (dir or its model.safetensors), else None."""
    path = Path(path)
    cfg_path = (path if path.is_dir() else path.parent) / CONFIG_NAME
    if (path.is_dir() or path.suffix == ".safetensors") and cfg_path.is_file():
        return DetectorConfig.from_yaml(cfg_path)
    return None
