"""lm-evaluation-harness offline, on a local multiple-choice task file, against a direct computation."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from miniplm.models.loading import load_tokenizer

lm_eval = pytest.importorskip(
    "lm_eval",
    reason="lm-evaluation-harness is an optional dependency (pip install '.[eval]'); the test set-up installs it",
)

ITEMS = [
    ("In the beginning God created the", ["heaven and the earth.", "fox and the dog.", "import os", "return a + b"], 0),
    ("def add(a, b):", ["return a + b", "the lazy dog", "God created", "café!"], 0),
    ("The quick brown fox jumps over", ["the lazy dog.", "the heaven.", "print(path)", "0123456789"], 0),
    ("import os\nfor path in", ["os.listdir('.'):", "the earth.", "brown fox", "Ünïcödé"], 0),
    ("numbers", ["0123456789", "the beginning", "jumps over", "def"], 1),
    ("Ünïcödé", ["café!", "God", "return", "a + b"], 2),
    ("print(", ["path)", "heaven", "lazy dog", "created the"], 3),
    ("the heaven and", ["the earth.", "the fox.", "os.listdir", "b):"], 0),
]

TASK_YAML = """task: tiny_choices
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
metadata: {{version: 1.0}}
"""


def write_task(folder):
    data = folder / "tiny-choices.jsonl"
    data.write_text("".join(json.dumps({"context": c, "choices": ch, "label": y}) + "\n" for c, ch, y in ITEMS))
    (folder / "tasks").mkdir()
    (folder / "tasks" / "tiny_choices.yaml").write_text(TASK_YAML.format(data=data))
    return folder / "tasks"


def direct_loglikelihoods(model, tokenizer, context: str, choices: list[str]) -> np.ndarray:
    """log p(" " + choice | context): the continuation's tokens are those of the whole string
    after the context's own tokens, as lm-eval splits them."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    out = []
    for choice in choices:
        whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx) :]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1]).logits.double(), dim=-1)[0]
        out.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
    return np.array(out)


def test_lm_eval_accuracy_equals_the_direct_computation(tiny_models, tmp_path):
    from miniplm.evaluation.harness import zero_shot

    tasks = write_task(tmp_path)
    tokenizer = load_tokenizer(tiny_models["teacher"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["teacher"], dtype=torch.float64).eval()
    result = zero_shot(
        model,
        tokenizer,
        ["tiny_choices"],
        task_paths=[str(tasks)],
        limit=None,
        num_fewshot=0,
        batch_size=4,
        log_samples=True,
    )

    correct, correct_norm = [], []
    for context, choices, label in ITEMS:
        lls = direct_loglikelihoods(model, tokenizer, context, choices)
        correct.append(int(np.argmax(lls)) == label)
        correct_norm.append(int(np.argmax(lls / np.array([len(c) for c in choices]))) == label)
    assert 0 < sum(correct_norm) < len(ITEMS) or 0 < sum(correct) < len(ITEMS), "a test that cannot tell"

    task = result["tasks"]["tiny_choices"]
    assert task["metric"] == "acc_norm" and task["n"] == len(ITEMS)
    assert task["value"] == pytest.approx(np.mean(correct_norm))
    assert result["average"] == task["value"]
    by_doc = {s["doc_id"]: s for s in result["samples"]["tiny_choices"]}
    assert [bool(by_doc[i]["acc"]) for i in range(len(ITEMS))] == correct
    assert [bool(by_doc[i]["acc_norm"]) for i in range(len(ITEMS))] == correct_norm


def test_pick_metric_prefers_acc_norm():
    from miniplm.evaluation.harness import pick_metric

    assert pick_metric({"acc,none": 0.5, "acc_norm,none": 0.6, "alias": "x"}) == ("acc_norm", 0.6)
    assert pick_metric({"acc,none": 0.5, "acc_stderr,none": 0.1}) == ("acc", 0.5)
    assert pick_metric({"perplexity,none": 3.0}) is None
