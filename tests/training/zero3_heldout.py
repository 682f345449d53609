"""Run by the ZeRO-3 held-out test under torchrun: held-out loss of a tiny model over a row count
that does not split evenly between the ranks. Rank 0 writes the loss and the plain single-process
value (computed before DeepSpeed partitions the weights) to the JSON file named on the command line."""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(out: Path, n_rows: int, micro: int) -> None:
    from transformers import AutoModelForCausalLM

    from miniplm.config import StudentConfig
    from miniplm.corpus.tokens import TokenRows, write_rows
    from miniplm.models.presets import qwen_config
    from miniplm.training.engine import deepspeed_config, objective
    from miniplm.training.launch import init_distributed
    from miniplm.training.trainer import heldout_loss

    rank = init_distributed()
    import deepspeed

    world = torch.distributed.get_world_size()
    rows_file = out.parent / "rows" / "shard-00000.arrow"
    if rank == 0:
        write_rows(rows_file, np.random.default_rng(0).integers(0, 64, size=(n_rows, 17)))
    torch.distributed.barrier()
    rows = TokenRows(rows_file.parent)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(qwen_config("tiny", 64, 64, None, None), attn_implementation="sdpa")
    batch = torch.from_numpy(np.stack([rows[i] for i in range(len(rows))]).astype(np.int64))
    with torch.no_grad():
        logits = model(batch[:, :-1]).logits
    plain = float(torch.nn.functional.cross_entropy(logits.reshape(-1, 64), batch[:, 1:].reshape(-1)))
    # no parameter is too small to partition: each forward gathers every one of them from all ranks
    student = StudentConfig(
        name="s",
        preset="tiny",
        tokens="t",
        steps=1,
        micro_batch=micro,
        zero_stage=3,
        deepspeed={"zero_optimization": {"stage3_param_persistence_threshold": 0}},
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(
        model=objective(student, model, "cpu"), optimizer=optimizer, config=deepspeed_config(student, micro, 1, False)
    )
    loss = heldout_loss(engine, rows, n_rows, rank, world, micro, "cpu")
    if rank == 0:
        out.write_text(json.dumps({"loss": loss, "plain": plain, "world": world}))
    # leave together: a rank exiting with the process group's threads still up can abort at exit
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
