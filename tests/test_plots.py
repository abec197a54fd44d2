"""plots.py: the one module that draws, and figures a reader can read at their saved size."""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from lab import plots

ROOT = Path(__file__).resolve().parents[1]
needs_matplotlib = pytest.mark.skipif(not importlib.util.find_spec("matplotlib"), reason="needs matplotlib")


def test_only_plots_imports_matplotlib():
    importers = []
    for path in [*ROOT.glob("*.py"), *ROOT.glob("lab/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "matplotlib" for name in names):
                importers.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(importers)) == ["lab/plots.py"]


def test_plural():
    assert plots.plural(1, "head") == "1 head"
    assert plots.plural(4, "head") == "4 heads"
    assert plots.plural(0, "layer") == "0 layers"


def tick_labels(axis):
    return [label.get_text() for label in axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)
            if label.get_text()]


@needs_matplotlib
@pytest.mark.parametrize("low, high", [(1.2, 1.9), (0.3, 6), (1e-3, 0.32), (0.2, 2e4)])
def test_log_axes_read_plain_numbers(low, high):
    fig = plots.new_figure(5, 3)
    ax = fig.subplots()
    ax.plot([0, 1], [low, high])
    ax.set(yscale="log", xscale="log", xlim=(low, high))
    plots.plain_log_ticks(fig)
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        labels = tick_labels(axis)
        assert labels, (low, high)
        for label in labels:  # 0.001, 0.3, 2, 10000, 1e+06: what '%g' writes, never 3x10^0
            assert re.fullmatch(r"\d+(\.\d+)?(e[+\N{MINUS SIGN}-]\d+)?", label), label


@needs_matplotlib
def test_fixed_tick_labels_on_a_log_axis_are_kept():
    fig = plots.new_figure(5, 3)
    ax = fig.subplots()
    ax.plot([64, 512], [1, 2])
    ax.set_xscale("log", base=2)
    ax.set_xticks([64, 128, 256, 512], ["64", "128", "256", "512"])
    plots.plain_log_ticks(fig)
    fig.canvas.draw()
    assert tick_labels(ax.xaxis)[:4] == ["64", "128", "256", "512"]


@needs_matplotlib
@pytest.mark.parametrize("panels", [1, 5])
def test_the_settings_line_fits_the_emergence_figure(tmp_path, monkeypatch, panels):
    # One panel without query classes (the narrowest figure), five with them.
    layers = (panels - 1) // 2
    classes = {"bos_attn_dormant": [0.5] * layers, "bos_attn_active": [0.1] * layers,
               "gate_dormant": [0.1] * layers, "gate_active": [0.8] * layers} if layers else {}
    records = [{"step": step, "f_attn": 0.1, **classes} for step in (0, 100)]
    title = ("dataset shakespeare, 1 layer x 128 wide, 1 head, context 64, batch 12x1, 20 steps (0.02M tokens), "
             "lr 0.001 (cosine to 0.0001), warm-up 100, weight decay 0.1, grad clip 1, dropout 0, seed 1337, "
             "device auto: cpu, dtype auto: bfloat16, compile auto: false")
    drawn = {}
    real_save = plots.save

    def keep(fig, path):
        drawn["fig"] = fig
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    path = plots.plot_emergence(tmp_path / "emergence.png", {"none": {"evals": records}}, title)
    assert path.stat().st_size > 0
    fig = drawn["fig"]
    from matplotlib.text import Text
    (line,) = [t for t in fig.findobj(Text) if t.get_text() and t.get_text() == fig.get_suptitle()]
    assert line.get_text().replace("\n", " ").startswith(title)
    box, page = line.get_window_extent(fig.canvas.get_renderer()), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)
    assert line.get_fontsize() >= plots.LEGEND_SIZE
