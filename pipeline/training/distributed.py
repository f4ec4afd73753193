"""Rank, world size and device of one training process; process-group setup for DDP.

Pure torch: an executor (pipeline/stages/executor.py) decides where ranks run and passes the
rendezvous address; nothing here knows about Dask.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def torch_device(self) -> torch.device:
        """cuda:local_rank for a CUDA rank (the executor's choice of card); a single process
        given `cuda:N` uses card N."""
        if self.device.startswith("cuda"):
            given = torch.device(self.device)
            if given.index is not None and not self.distributed:
                return given
            return torch.device("cuda", self.local_rank)
        return torch.device(self.device)


def init_process_group(env: DistEnv, init_method: str, timeout_s: float = 600.0) -> None:
    """NCCL on GPUs, gloo on CPUs; a no-op for a single process.

    On GPUs the rank's card becomes this thread's current device before the group exists, and
    the group is bound to it (`device_id`): NCCL then builds its communicator on that card
    at once, and barriers and collectives never guess a device (the default, cuda:0 for every
    rank, would put all ranks' NCCL buffers on one card and can hang a barrier)."""
    if not env.distributed:
        return
    cuda = env.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(env.torch_device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=env.rank,
                            world_size=env.world_size, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=env.torch_device if cuda else None)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average scalar metrics over ranks (logging only; cheap, once per log line)."""
    if not env.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=env.torch_device)   # NCCL reduces CUDA tensors only
    dist.all_reduce(t)
    t /= env.world_size
    return dict(zip(keys, t.tolist()))


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier(device_ids=[env.torch_device.index] if env.device.startswith("cuda") else None)
