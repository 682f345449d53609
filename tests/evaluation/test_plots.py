"""The figure of results against compute: each student against its training FLOPs (the paper's axis)
and against its total FLOPs, each axis saying which it is; the unigram floor as a labelled line;
no label drawn over another."""

from itertools import combinations

import pytest
from matplotlib.text import Text

from miniplm.evaluation import plots


def _student(loss: float, accuracy: float, training: float, teacher: float, shared: float, on: str) -> dict:
    return {
        "role": "student",
        "trained_on": on,
        "lm": {"heldout": {"loss": loss}},
        "zero_shot": {"average": accuracy},
        "compute": {"training": training, "teacher": teacher, "shared": shared, "total": training + shared},
    }


RESULTS = {
    "selected": _student(5.0, 0.30, 1e12, 0.0, 1.9e13, "selected"),
    "random": _student(5.2, 0.28, 1e12, 0.0, 0.0, "random"),
    "vanilla-kd": _student(4.9, 0.31, 4e12, 3e12, 0.0, "random + KD (forward_kl, online)"),
    "teacher": {"role": "teacher", "trained_on": "", "lm": {"heldout": {"loss": 3.0}}, "zero_shot": {"average": 0.5}},
    "unigram (random)": {"role": "unigram", "trained_on": "random", "lm": {"heldout": {"loss": 6.5}}, "compute": None},
}


def _draw(monkeypatch, tmp_path, results: dict[str, dict]):
    """The figure `against_compute` draws, laid out as it is saved."""
    drawn = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path: drawn.append(fig))
    plots.against_compute(results, {name: [name] for name in results}, tmp_path / "compute.png")
    (fig,) = drawn
    fig.canvas.draw()
    return fig


@pytest.fixture
def figure(monkeypatch, tmp_path):
    return _draw(monkeypatch, tmp_path, RESULTS)


def _x_title(ax) -> str:
    """The title of an axes' x axis: its own label, else the one its (sub)figure shares over its axes."""
    return ax.get_xlabel() or ax.get_figure(root=False).get_supxlabel()


def _points(ax) -> dict[str, float]:
    """Each point's legend label and x (a point is an errorbar: its data line and the bars)."""
    return {bars.get_label(): float(bars.lines[0].get_xdata()[0]) for bars in ax.containers}


def _labels(fig) -> list[Text]:
    """Every text drawn outside the axes: the axis titles, the tick labels within each axis's view
    (those beyond it are kept but not drawn), and the rest the figure and its rows hold: titles and
    x-axis titles shared over axes."""
    texts, ticks = [], set()
    for ax in fig.axes:
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks.add(tick.label1)
                texts += [tick.label1] if lo <= tick.get_loc() <= hi else []
    texts += [
        t
        for t in fig.findobj(Text)
        if t.axes is None and t not in ticks and t.get_figure(root=False) in (fig, *fig.subfigs)
    ]
    return [t for t in dict.fromkeys(texts) if t.get_visible() and t.get_text().strip()]


def test_each_student_is_drawn_against_its_training_and_its_total_flops(figure):
    by_axis = {}
    for ax in figure.axes:
        title = _x_title(ax)
        kind = "training" if "training FLOPs" in title else "total" if "total FLOPs" in title else None
        assert kind is not None, title
        by_axis.setdefault(kind, []).append(ax)
    assert len(by_axis["training"]) == len(by_axis["total"]) == 2  # loss and accuracy, each way
    for kind, axes in by_axis.items():
        for ax in axes:
            points = _points(ax)
            assert points == {
                f"{name} ({RESULTS[name]['trained_on']})": RESULTS[name]["compute"][kind]
                for name in ("selected", "random", "vanilla-kd")
            }, kind
    # the training axis says what it counts: an online KD teacher's forward passes are in it
    assert all("teacher" in _x_title(ax) for ax in by_axis["training"])
    titles = " ".join(t.get_text() for t in figure.findobj(Text))
    assert "paper" in titles  # which of the two is the paper's compute axis


def test_the_unigram_floor_is_a_dashed_line_labelled_with_its_token_set(figure):
    for ax in figure.axes:
        lines = {line.get_label(): line for line in ax.lines if line.get_linestyle() == "--"}
        if "accuracy" in ax.get_ylabel():
            assert "unigram (random)" not in lines  # a unigram has no task accuracy
            continue
        floor = lines["unigram (random)"]
        assert list(floor.get_ydata()) == [6.5, 6.5]
        assert "unigram (random)" not in _points(ax)


@pytest.mark.parametrize("tasks", [True, False])
def test_no_label_overlaps_another(monkeypatch, tmp_path, tasks):
    results = RESULTS if tasks else {n: {k: v for k, v in r.items() if k != "zero_shot"} for n, r in RESULTS.items()}
    figure = _draw(monkeypatch, tmp_path, results)
    renderer = figure.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _labels(figure)]
    assert sum("FLOPs" in text for text, _ in boxes) >= 2
    overlapping = [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2) if box_a.overlaps(box_b)]
    assert not overlapping


def test_close_compute_values_keep_their_tick_labels_apart_and_the_legend_covers_no_point(monkeypatch, tmp_path):
    """kd-compare's totals of 2.47e12 and 2.69e12 printed their ticks over each other, and a legend
    inside a panel hid the points under it."""
    results = {
        **RESULTS,
        "seqkd": _student(5.1, 0.29, 1e12, 0.0, 1.47e12, "written"),
        "kd": _student(5.05, 0.29, 1e12, 0.0, 1.69e12, "random + KD"),
    }
    figure = _draw(monkeypatch, tmp_path, results)
    renderer = figure.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _labels(figure)]
    assert not [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2) if box_a.overlaps(box_b)]
    assert any(text == "2.47e+12" for text, _ in boxes)
    (legend,) = figure.legends
    assert not [ax for ax in figure.axes if legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))]
    assert {t.get_text() for t in legend.get_texts()} >= {"unigram (random)", "seqkd (written)"}


def test_spaced_ticks_keep_the_first_of_each_close_run():
    assert plots.spaced([3e12, 1e12, 1.1e12, 2.9e12, 1e13], 1.5) == [1e12, 2.9e12, 1e13]
