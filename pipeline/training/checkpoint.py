"""What a checkpoint holds besides the model: optimiser, scheduler, scaler, RNG, data position.

`resume.pt` holds tensors and plain Python values only and loads with
`torch.load(weights_only=True)`. The model weights live in the same directory's
model.safetensors (written by the task, in the model package's format).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from model.errors import refused_pickle, torch_load_reason
from pipeline.errors import PipelineError
from pipeline.training.run_dir import RESUME


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every random stream a training step draws from: torch's CPU generator, numpy's,
    Python's, and on a CUDA `device` that device's generator (dropout on the GPU). Only the
    training device's: every rank seeds and draws alike, so rank 0's stream is each rank's
    own, and asking for all devices would open a CUDA context on every card of the host."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": repr(random.getstate()),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state`'s streams; the CUDA one onto `device` when both are CUDA (a run
    resumed on another kind of device cannot continue its stream: it keeps its seed's)."""
    import ast

    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_tuples(ast.literal_eval(state["python"])))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_resume(directory: Path, **state: Any) -> None:
    torch.save(state, directory / RESUME)


def load_resume(directory: Path) -> dict[str, Any]:
    path = directory / RESUME
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError("checkpoint has no resume.pt (not a training checkpoint?)", directory) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise PipelineError(refused_pickle(err) or f"cannot load resume state ({torch_load_reason(err)})",
                            path) from None


def load_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load model.safetensors strictly, tolerating only keys of tied (shared) parameters."""
    path = directory / "model.safetensors"
    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001
        raise PipelineError(f"cannot read model weights: {err}", path) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise PipelineError(f"weights do not fit the model: {str(err).splitlines()[0]}", path) from None
    loaded = {t.data_ptr() for k, t in model.state_dict().items() if k in state}
    params = model.state_dict()
    untied = [k for k in missing if params[k].data_ptr() not in loaded]
    if untied or unexpected:
        raise PipelineError(f"weights do not fit the model: missing {untied[:5]}, unexpected {unexpected[:5]}", path)
