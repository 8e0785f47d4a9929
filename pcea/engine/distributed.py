"""torch.distributed for training: the process group, sharding, and reducing counts across ranks.

A run is distributed when it was started by ``torchrun`` (which sets RANK,
WORLD_SIZE and LOCAL_RANK): ``torchrun --nproc_per_node N -m pcea train ...``.
Otherwise every function here is a no-op on a single process.
"""

from __future__ import annotations

import os
import re
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


# The devices pcea runs on; torch.device also parses meta, xla, ipu, privateuseone, ..., which
# pcea has never run on and which fail deep inside torch.
_DEVICE = re.compile(r"(cpu|mps|cuda)(:(\d{1,3}))?")
DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device, env: DistEnv | None = None) -> torch.device:
    """The device a ``--device`` value names, checked: the one place every command turns one into a device.

    ``"auto"`` is CUDA (this rank's GPU under torchrun), else MPS, else CPU. Otherwise only
    ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are accepted, and only when this torch build and
    machine can use them.

    Raises:
        PceaError: another device string (``meta``, ``xla``, ``ipu``, ``privateuseone``, a typo),
            or one that is not available here.
    """
    env = env or DistEnv()
    text = str(name)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env.local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available() and not env.enabled:
            return torch.device("mps")
        return torch.device("cpu")
    match = _DEVICE.fullmatch(text)
    if not match or (match[1] != "cuda" and match[3] not in (None, "0")):
        raise PceaError(f"--device {text!r}: not a device pcea runs on; expected {DEVICES}")
    kind, index = match[1], None if match[3] is None else int(match[3])
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PceaError(f"--device {text}: CUDA is not available on this machine or in this torch build "
                            f"(torch {torch.__version__})")
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise PceaError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to "
                            f"cuda:{count - 1}")
        if index is None and env.enabled:
            index = env.local_rank % count
        return torch.device("cuda", index) if index is not None else torch.device("cuda")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PceaError(f"--device {text}: MPS is not available on this machine or in this torch build")
    return torch.device(kind)
