"""Every collective miniplm issues itself, in one place, on the device its process group serves.

A backend serves tensors of some device types only: nccl serves CUDA tensors
and nothing else, so a flag or a sum built on the CPU and handed to it fails
("No backend type associated with device type cpu"), while gloo serves the
CPU. Each function here builds its tensor on `collective_device()`, the device
the process group's backend serves, and hands back plain Python values. No
other module calls torch.distributed's collectives (a test reads the package
to make sure), so the CPU tests, which run gloo, cover what runs under nccl.

DeepSpeed's own collectives (gradients, ZeRO partitions) are DeepSpeed's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_rank_zero() -> bool:
    return rank() == 0


def served_device_types() -> list[str]:
    """The device types the default process group's backend serves, e.g. ['cpu', 'cuda'] for gloo,
    ['cuda'] for nccl (from its backend config, "cpu:gloo,cuda:gloo")."""
    return [part.split(":")[0] for part in dist.get_backend_config().split(",")]


def collective_device() -> torch.device:
    """Where a collective's tensor must live: the CPU when the backend serves it (no copy to a
    device for a flag or a few numbers), else the backend's device (nccl: this process's GPU)."""
    types = served_device_types()
    if "cpu" in types:
        return torch.device("cpu")
    if types[0] == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(types[0])


def broadcast_flag(value: bool, src: int = 0) -> bool:
    """Rank `src`'s `value`, on every rank."""
    flag = torch.tensor([int(value)], dtype=torch.int64, device=collective_device())
    dist.broadcast(flag, src=src)
    return bool(flag.item())


def all_sum(values: torch.Tensor | Sequence[float]) -> list[float]:
    """Element-wise sums over ranks, in float64 (counts and loss totals stay exact)."""
    device = collective_device()
    if isinstance(values, torch.Tensor):  # a copy: the caller's tensor stays as it was
        tensor = values.detach().to(device=device, dtype=torch.float64, copy=True).reshape(-1)
    else:
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_mean(value: torch.Tensor | float) -> float:
    """The mean of one number over ranks."""
    return all_sum(value.reshape(1) if isinstance(value, torch.Tensor) else [value])[0] / world_size()


def all_min(value: int) -> int:
    """The least of one whole number over ranks."""
    tensor = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def barrier() -> None:
    """Wait for every rank. Under nccl the barrier runs on this process's GPU, named so that it
    never picks another one."""
    device = collective_device()
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
