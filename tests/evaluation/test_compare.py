"""The comparison table: a unigram row per token set (no task accuracy, no model compute), and the
training FLOPs column saying how much of it is an online KD teacher's forward passes."""

from miniplm.evaluation.compare import markdown, table


def _student(loss: float, training: float, teacher: float, on: str) -> dict:
    return {
        "role": "student",
        "trained_on": on,
        "lm": {"heldout": {"loss": loss}},
        "zero_shot": {"tasks": {"piqa": {"metric": "acc_norm", "value": 0.5}}, "average": 0.5},
        "compute": {"training": training, "teacher": teacher, "shared": 0.0, "total": training},
    }


RESULTS = {
    "plain": _student(5.2, 1e12, 0.0, "random"),
    "plain.seed1": _student(5.3, 1e12, 0.0, "random"),
    "vanilla-kd": _student(4.9, 4e12, 3e12, "random + KD (forward_kl, online)"),
    "vanilla-kd.seed1": _student(4.8, 4e12, 3e12, "random + KD (forward_kl, online)"),
    "unigram (random)": {"role": "unigram", "trained_on": "random", "lm": {"heldout": {"loss": 6.5}}, "compute": None},
}


def test_unigram_row_and_the_kd_teachers_part_of_training():
    headers, rows = table(RESULTS)
    assert headers[-5:] == ["average", "train FLOPs", "of which KD teacher", "total FLOPs", "seeds"]
    cells = {row[0]: dict(zip(headers, row)) for row in rows}
    assert list(cells) == ["plain", "vanilla-kd", "unigram (random)"]  # replicas together, the unigram once
    assert cells["vanilla-kd"]["train FLOPs"] == "4.00e+12" and cells["vanilla-kd"]["of which KD teacher"] == "3.00e+12"
    assert cells["plain"]["of which KD teacher"] == "0.00e+00"
    unigram = cells["unigram (random)"]
    assert (unigram["role"], unigram["trained on"], unigram["heldout loss"]) == ("unigram", "random", "6.5000")
    assert unigram["piqa (acc_norm)"] == unigram["average"] == ""  # a unigram has no task accuracy
    assert unigram["train FLOPs"] == unigram["of which KD teacher"] == unigram["total FLOPs"] == "-"
    assert unigram["seeds"] == "1"


def test_without_online_kd_there_is_no_teacher_column():
    results = {name: r for name, r in RESULTS.items() if not name.startswith("vanilla-kd")}
    headers, _ = table(results)
    assert "of which KD teacher" not in headers and "train FLOPs" in headers
    assert markdown(results).splitlines()[0].endswith("| train FLOPs | total FLOPs | seeds |")
