"""Zero-shot accuracy through lm-evaluation-harness (the optional `lm_eval` package).

Tasks are lm-eval's own (the paper's nine by default) or defined in local
task YAML files (`dataset_path: json` with `data_files`), which is how
evaluation works offline. Each task reports acc_norm where it has it, acc
otherwise, as the paper does.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from miniplm.errors import ConfigError
from miniplm.logs import library_output

PREFERRED_METRICS = ("acc_norm", "acc")


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(
            "eval.tasks need lm-evaluation-harness: pip install 'lm_eval>=0.4' "
            "(or pip install -e '.[eval]'); set eval.tasks: [] for held-out loss only"
        ) from None


def pick_metric(task_result: dict[str, Any]) -> tuple[str, float] | None:
    """(metric, value) for one task's results: acc_norm where present, else acc."""
    for metric in PREFERRED_METRICS:
        for key, value in task_result.items():
            if key.split(",")[0] == metric and isinstance(value, (int, float)):
                return metric, float(value)
    return None


def zero_shot(
    model,
    tokenizer,
    tasks: list[str],
    *,
    task_paths: list[str],
    limit: int | None,
    num_fewshot: int,
    batch_size: int,
    max_length: int | None = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """{"tasks": {task: {"metric", "value", "n"}}, "average": mean value, "samples": ... (when asked)}."""
    require_lm_eval()
    with library_output():
        return _zero_shot(
            model,
            tokenizer,
            tasks,
            task_paths=task_paths,
            limit=limit,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            max_length=max_length,
            log_samples=log_samples,
        )


@lru_cache(maxsize=4)
def _task_manager(task_paths: tuple[str, ...]):
    """lm-eval's task index, built once per process: it reads every task YAML lm-eval ships (some
    14,000 files, about 20 s on 2 cores), which each evaluated model would otherwise pay again."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(task_paths) or None)


def _zero_shot(
    model,
    tokenizer,
    tasks: list[str],
    *,
    task_paths: list[str],
    limit: int | None,
    num_fewshot: int,
    batch_size: int,
    max_length: int | None,
    log_samples: bool,
) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    for path in task_paths:
        if not Path(path).exists():
            raise ConfigError(f"eval.task_paths: nothing at {path!r}")
    manager = _task_manager(tuple(str(Path(p).absolute()) for p in task_paths))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            f"eval.tasks: lm-eval knows no task {', '.join(map(repr, unknown))} "
            "(a typo, or a local task whose folder is not in eval.task_paths)"
        )
    # max_length: a student's context is what it trained on, not its config's max_position_embeddings
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=log_samples,
        bootstrap_iters=0,
    )
    results: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        picked = pick_metric(out["results"].get(task, {}))
        if picked is None:
            raise RuntimeError(f"lm-eval task {task!r} reported neither acc_norm nor acc: {out['results'].get(task)}")
        results["tasks"][task] = {
            "metric": picked[0],
            "value": picked[1],
            "n": int(out.get("n-samples", {}).get(task, {}).get("effective", 0)),
        }
    values = [t["value"] for t in results["tasks"].values()]
    results["average"] = sum(values) / len(values) if values else None
    if log_samples:
        results["samples"] = out.get("samples", {})
    return results
