"""A process-group backend that serves one device type only, as nccl serves only CUDA, for a machine
without a GPU: it serves torch's `lazy` device (tensors with real values, computed on the CPU) and
refuses a tensor of any other device, as nccl refuses a CPU tensor. The values travel over gloo.

    python -m tests.strict_backend OUT.json    # two ranks run every collective of miniplm.distributed
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from torch.futures import Future

NAME = "lazyonly"
DEVICE = "lazy"


class OneDeviceBackend(dist.ProcessGroup):
    def __init__(self, store, rank: int, world: int, timeout):
        super().__init__(rank, world)
        self.gloo = dist.ProcessGroupGloo(dist.PrefixStore(NAME, store), rank, world, timeout)

    def _served(self, tensors) -> None:
        for t in tensors:
            if t.device.type != DEVICE:
                raise RuntimeError(
                    f"No backend type associated with device type {t.device.type} "
                    f"(this backend serves {DEVICE} tensors only)"
                )

    def _done(self, tensors):
        future = Future()
        future.set_result(tensors)
        return torch._C._distributed_c10d._create_work_from_future(future)

    def _via_gloo(self, tensors, collective):
        self._served(tensors)
        on_cpu = [t.cpu() for t in tensors]
        collective(on_cpu).wait()
        for t, c in zip(tensors, on_cpu):
            t.copy_(c)
        return self._done(tensors)

    def allreduce(self, tensors, opts):
        return self._via_gloo(tensors, lambda c: self.gloo.allreduce(c, opts))

    def broadcast(self, tensors, opts):
        return self._via_gloo(tensors, lambda c: self.gloo.broadcast(c, opts))

    def barrier(self, opts):
        self.gloo.barrier().wait()
        return self._done([])

    def getBackendName(self) -> str:
        return NAME


def _create(store, rank, world, timeout):
    return OneDeviceBackend(store, rank, world, timeout)


def _rank(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch._lazy.ts_backend

    from miniplm import distributed

    torch._lazy.ts_backend.init()
    dist.Backend.register_backend(NAME, _create, devices=[DEVICE])
    dist.init_process_group(NAME, init_method=f"file://{store}", rank=rank, world_size=world)
    out = {
        "device": str(distributed.collective_device()),
        "broadcast_flag": [distributed.broadcast_flag(rank == 0), distributed.broadcast_flag(rank == 1, src=1)],
        "all_sum": [distributed.all_sum([rank + 1.0, 10.0]), distributed.all_sum(torch.tensor([0.5 * (rank + 1)]))],
        "all_mean": distributed.all_mean(torch.tensor(2.0 * rank)),
        "all_min": distributed.all_min(5 - rank),
    }
    distributed.barrier()
    out["barrier"] = True
    try:  # what train.py did before: a flag built on the CPU
        dist.broadcast(torch.tensor([1]), src=0)
        out["cpu_tensor"] = "accepted"
    except RuntimeError as e:
        out["cpu_tensor"] = str(e)
    dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


def main(out_path: str, world: int = 2) -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, os.path.join(tmp, "store"), tmp), nprocs=world)
        results = [json.load(open(os.path.join(tmp, f"rank{r}.json"))) for r in range(world)]
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
