"""Batches onto the training device, the next one already on its way while this one computes.

`DeviceBatches` hands out a DataLoader's batches in the DataLoader's order, each moved to
the device, and always holds the following batch: on CUDA its host-to-device copy is issued
on a side stream as soon as the current batch is handed out, from pinned memory
(`pin_memory=True` in the loop's DataLoader) with `non_blocking=True`, so the copy runs
while the GPU computes the current step and the training stream only waits for it (an
event, not a host sync) when it takes the batch. Elsewhere the same one-ahead order runs
without streams, so the CPU tests exercise what the GPU path shares.

It never changes which batches come or in what order: it only changes when each is read.
(The batches' own randomness comes from generators seeded by their position, never from the
global RNGs, so reading one batch early draws nothing that a step would.)
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` (tensors in dicts, lists, tuples) on `device`; copies from pinned memory do not
    block the host."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _record_stream(batch: Any, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator that `stream` uses the batch's memory (allocated on the side
    stream), so it is not handed out again while the training stream still reads it."""
    if isinstance(batch, torch.Tensor):
        if batch.is_cuda:
            batch.record_stream(stream)
    elif isinstance(batch, dict):
        for value in batch.values():
            _record_stream(value, stream)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            _record_stream(value, stream)


_END = object()


class DeviceBatches(Iterator[Any]):
    """The batches of `loader` on `device`, one batch ahead (see the module's docstring)."""

    def __init__(self, loader: Iterable[Any], device: torch.device):
        # nothing is read (no DataLoader worker started) before the first next(): the caller's
        # time in next() is all the time spent on data
        self.loader, self.device = loader, device
        self.batches: Iterator[Any] | None = None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ahead: Any = None

    def _fetch(self) -> Any:
        try:
            batch = next(self.batches)
        except StopIteration:
            return _END
        if self.stream is None:
            return to_device(batch, self.device)
        with torch.cuda.stream(self.stream):
            return to_device(batch, self.device)

    def __iter__(self) -> "DeviceBatches":
        return self

    def __next__(self) -> Any:
        if self.batches is None:
            self.batches = iter(self.loader)
            self.ahead = self._fetch()
        batch = self.ahead
        if batch is _END:
            raise StopIteration
        if self.stream is not None:
            training = torch.cuda.current_stream(self.device)
            training.wait_stream(self.stream)      # the copy is finished before any kernel reads it
            _record_stream(batch, training)
        self.ahead = self._fetch()
        return batch
