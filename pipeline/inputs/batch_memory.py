"""Where a batch's tensors live, so that a DataLoader worker hands them over cheaply.

A worker's batch reaches the training process through shared memory. Torch moves every
tensor that is not already there into a fresh segment of its own when the batch is sent:
a copy, new pages to fault in on both sides, and one segment per tensor. Measured on a
batch of 64 (research/2026-12-02-loader-float16.md): the 15 small tensors of a pretraining
batch cost ~5 ms of CPU in the worker and ~5 ms in the training process as separate
segments, ~2 ms in all as views of one segment; the float16 features cost ~20 ms more when
copied into shared memory at sending time than when written there in the first place.

So, in a worker, the features are made in shared memory (`batch_tensor`) and the small
arrays copied into one shared block (`batch_tensors`). In the training process itself
(no workers) both are plain tensors over the numpy memory: no copy at all.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

_ALIGN = 64   # bytes: every array of a block starts on a cache line


def in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


def torch_dtype(dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype (native byte order)."""
    return torch.from_numpy(np.empty(0, np.dtype(dtype).newbyteorder("="))).dtype


def _shared(nbytes: int) -> torch.UntypedStorage:
    # what torch's own default_collate uses to stack a worker's batch in shared memory
    return torch.UntypedStorage._new_shared(max(nbytes, 1))


def _view(storage: torch.UntypedStorage, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty((), dtype=dtype).set_(storage, offset // dtype.itemsize, shape)


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a large batch array: in a DataLoader worker, in shared
    memory, so that sending the batch does not copy it again."""
    if not in_worker():
        return torch.empty(shape, dtype=dtype)
    return _view(_shared(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize), 0, tuple(shape), dtype)


def batch_tensors(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's arrays as tensors, in the same order. Tensors are kept as they are. In a
    DataLoader worker the numpy arrays are copied into one block of shared memory, each
    tensor a view of it; elsewhere each tensor shares its array's memory."""
    if not in_worker():
        return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
                for k, v in arrays.items()}
    places: dict[str, int] = {}
    size = 0
    for k, v in arrays.items():
        if not isinstance(v, torch.Tensor):
            places[k] = size
            size += -(-np.asarray(v).nbytes // _ALIGN) * _ALIGN
    storage = _shared(size)
    out = {}
    for k, v in arrays.items():
        if isinstance(v, torch.Tensor):
            out[k] = v
            continue
        v = np.asarray(v)
        tensor = _view(storage, places[k], v.shape, torch_dtype(v.dtype))
        np.copyto(tensor.numpy(), v)
        out[k] = tensor
    return out
