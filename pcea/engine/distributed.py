"""torch.distributed for training: the process group, sharding, and reducing counts across ranks.

A run is distributed when it was started by ``torchrun`` (which sets RANK,
WORLD_SIZE and LOCAL_RANK): ``torchrun --nproc_per_node N -m pcea train ...``.
Otherwise every function here is a no-op on a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from pcea.errors import PceaError

__all__ = ["DistEnv", "ShardSampler", "average_batchnorm_buffers", "resolve_device"]


@dataclass
class DistEnv:
    """Where this process sits in a distributed run; rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistEnv:
        """Read torchrun's environment variables; a plain process is rank 0 of 1."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        )

    def init(self, device: torch.device) -> None:
        """Join the process group: NCCL between GPUs, gloo on the CPU."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size,
                                timeout=timedelta(minutes=30))

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. an error message, so that all ranks stop together)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class ShardSampler(Sampler[int]):
    """Every rank takes indices ``rank, rank + world_size, ...``, without padding.

    Unlike DistributedSampler this never repeats a sample to even out the shards,
    so counts summed across ranks are exactly those of the whole split: the
    right sampler for evaluation.
    """

    def __init__(self, length: int, env: DistEnv):
        self.length = length
        self.env = env

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.env.rank, self.length, self.env.world_size))

    def __len__(self) -> int:
        return len(range(self.env.rank, self.length, self.env.world_size))


def average_batchnorm_buffers(model: nn.Module, env: DistEnv) -> None:
    """Average BatchNorm running statistics over ranks.

    SyncBatchNorm only runs on GPUs; on the CPU (gloo) each rank normalises its
    own part of the batch, and this makes the running statistics, and thus the
    saved model, identical on every rank at the end of each epoch.
    """
    if not env.enabled:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            for buffer in (module.running_mean, module.running_var):
                env.sum_(buffer.data)
                buffer.data /= env.world_size


def resolve_device(name: str, env: DistEnv | None = None) -> torch.device:
    """``"auto"`` -> CUDA (this rank's GPU under torchrun), else MPS, else CPU.

    Raises:
        PceaError: an unknown device string or one that is not available.
    """
    env = env or DistEnv()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env.local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available() and not env.enabled:
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PceaError(f"--device {name!r}: not a device (try auto, cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PceaError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PceaError(f"--device {name}: MPS is not available on this machine")
    if device.type == "cuda" and env.enabled and device.index is None:
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return device

