"""Every figure of the lab, drawn with matplotlib if it is installed (everything else works without it).

The scripts measure and pass their numbers in; nothing here trains or loads a model:

    lab.analyze   first_token_attention.png, massive_activations.png, gate_scores.png,
                  attention_map_layerN.png, bos_by_query_class.png          (plot_figures)
    lab.compare   loss.png, layers.png, emergence.png, bos_classes.png     (plot_losses, plot_layers, ...)
    lab.sweep     loss_vs_lr.png, highest_lr.png                          (plot_loss_vs_lr, plot_highest_lr)
    lab.longctx   extension.png, sinks.png                                 (plot_extension, plot_sinks)

Figures are drawn off-screen (matplotlib's Figure, no pyplot state), so nothing opens a window.
"""

import math
import textwrap
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------------------
# Figures, and whether matplotlib is there
# ---------------------------------------------------------------------------

# Readable at the saved size: every figure is written at DPI dots per inch, with no text
# smaller than LEGEND_SIZE points (matplotlib's default text is 10 points).
DPI = 100
SUBTITLE_SIZE = 9  # the settings line above the panels
LEGEND_SIZE = 8


def new_figure(width, height):
    """A matplotlib Figure drawn off-screen (no pyplot state), or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def has_matplotlib():
    """Whether figures can be drawn; if not, says how to get them."""
    if new_figure(1, 1) is None:
        print("figures skipped: pip install matplotlib")
        return False
    return True


def plural(n, word):
    """'1 head', '4 heads'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def wrapped(text, inches, size):
    """`text` broken into lines that fit `inches` at a font of `size` points (a character is
    about 0.6 of the size wide), so that a title wider than its figure is not cut off."""
    return textwrap.fill(text, max(20, int(inches * 72 / (0.6 * size))))


def subtitle(fig, text):
    """The settings line above the panels, wrapped to the figure's width; the figure grows by its
    extra lines, so that the panels keep their size."""
    text = wrapped(text, fig.get_figwidth(), SUBTITLE_SIZE)
    fig.set_figheight(fig.get_figheight() + text.count("\n") * 1.3 * SUBTITLE_SIZE / 72)
    fig.suptitle(text, fontsize=SUBTITLE_SIZE)


def plain_log_ticks(fig):
    """Label every log-scale axis of `fig` with plain numbers (3, 0.001, 1e+04: '%g') instead of
    matplotlib's 3x10^0, on the same ticks matplotlib would label. Axes with fixed labels are left alone."""
    from matplotlib.ticker import FixedFormatter, LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x, pos=None):
            return super().__call__(x, pos) and f"{x:g}"  # '' where matplotlib leaves a tick unlabelled

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log" and not isinstance(axis.get_major_formatter(), FixedFormatter):
                base = axis.get_transform().base
                axis.set_major_formatter(PlainLogFormatter(base))
                axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))


def save(fig, path):
    """Write `fig` to `path` (plain numbers on log axes, at DPI); returns the path."""
    plain_log_ticks(fig)
    fig.savefig(path, dpi=DPI)
    return path


# ---------------------------------------------------------------------------
# lab.analyze: one panel per checkpoint
# ---------------------------------------------------------------------------


def plot_figures(results, fig_dir, layer):
    """Heatmaps of first-token attention, M-Act per layer, gate histograms and the
    attention map of `layer`; returns the files written (none without matplotlib)."""
    if not has_matplotlib():
        return []
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = list(results)
    figures = {"first_token_attention.png": _plot_first_token_attention, "massive_activations.png": _plot_activations,
               "gate_scores.png": _plot_gates, f"attention_map_layer{layer}.png": _plot_maps,
               "bos_by_query_class.png": _plot_bos_classes}
    written = []
    for filename, draw in figures.items():
        fig = new_figure(4 + 3 * len(names), 4)
        if draw(fig, names, results):
            written.append(save(fig, fig_dir / filename))
    return written


def _plot_first_token_attention(fig, names, results):
    # One colour scale for all models, from 0 to the largest value shown.
    top = max(max(max(heads) for heads in results[name]["per_layer"]["first_token_attn"]) for name in names) or 1.0
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        r = results[name]
        alpha = np.array(r["per_layer"]["first_token_attn"])  # (layers, heads)
        image = ax.imshow(alpha, vmin=0, vmax=top, aspect="auto")
        for (layer, head), value in np.ndenumerate(alpha):  # the numbers, as small ones barely show in colour
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if value < top / 2 else "black")
        ax.set(title=f"{wrapped(name, 3, 12)}\nF-Attn {r['f_attn']:.2f}, Sink_1 {r['sink_1']:.0f}%", xlabel="head",
               ylabel="layer",
               xticks=range(alpha.shape[1]), yticks=range(alpha.shape[0]))
    fig.colorbar(image, ax=list(axes), label="attention on token 0 (alpha_1)")
    return True


def _plot_activations(fig, names, results):
    ax = fig.subplots()
    for name in names:
        peak = results[name]["per_layer"]["m_act"]
        ax.plot(range(len(peak)), peak, marker="o", label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(yscale="log", xlabel="layer", ylabel="max |h| (M-Act)", title="massive activations")
    ax.legend()
    return True


def _plot_gates(fig, names, results):
    gated = [name for name in names if results[name]["gate_hist"] is not None]
    if not gated:
        return False
    ax = fig.subplots()
    for name in gated:
        ax.stairs(results[name]["gate_hist"], np.linspace(0, 1, len(results[name]["gate_hist"]) + 1), label=name)
    ax.set(xlabel="gate score (outside [0, 1] counted in the end bins)", ylabel="fraction of scores",
           title="gate scores, all layers")
    ax.legend()
    return True


def _plot_maps(fig, names, results):
    names = [name for name in names if "attn_map" in results[name]]
    if not names:
        return False
    maps = [np.array(results[name]["attn_map"]["per_head"]) for name in names]
    heads = max(m.shape[0] for m in maps)
    fig.set_size_inches(2.2 * heads + 1, 2.2 * len(names) + 0.5)
    axes = fig.subplots(len(names), heads, squeeze=False)
    for row, (name, per_head) in enumerate(zip(names, maps)):
        for head in range(heads):
            ax = axes[row][head]
            if head >= len(per_head):
                ax.set_axis_off()
                continue
            # The square root spreads out the small probabilities next to a sink.
            image = ax.imshow(np.sqrt(per_head[head]), vmin=0, vmax=1)
            ax.set_title(f"{wrapped(name, 2, LEGEND_SIZE)}\nhead {head}" if head == 0 else f"head {head}",
                         fontsize=LEGEND_SIZE)
            ax.set_xlabel("key position", fontsize=LEGEND_SIZE)
            ax.set_ylabel("query position", fontsize=LEGEND_SIZE)
            ax.tick_params(labelsize=LEGEND_SIZE)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="sqrt(attention probability)")
    fig.suptitle(f"layer {results[names[0]]['attn_map']['layer']}, mean over sequences")
    return True


CLASS_PANELS = [  # (per-layer keys, bar labels, axis label, title)
    (("bos_attn_dormant", "bos_attn_active"), ("dormant", "active"), "attention on BOS",
     "BOS attention by query class"),
    (("gate_dormant", "gate_active"), ("dormant", "active"), "mean gate score", "gate by query class"),
    (("value_norm_bos", "value_norm_other"), ("BOS", "other"), "mean |v| (over heads)", "value norm (drain)"),
    (("resid_norm_bos", "resid_norm_other"), ("BOS", "other"), "mean |h| after the layer", "residual norm (peak)"),
]


def _plot_bos_classes(fig, names, results):
    """Per layer, bars per model: BOS attention and gate of dormant and active queries,
    value and residual norms at BOS against the other positions. False if nothing to draw."""
    panels = [panel for panel in CLASS_PANELS
              if any(results[name]["per_layer"].get(panel[0][0]) is not None for name in names)]
    if not panels:
        return False
    fig.set_size_inches(3.6 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / (2 * len(names))
    for ax, (keys, labels, ylabel, title) in zip(axes, panels):
        for m, name in enumerate(names):
            per_layer = results[name]["per_layer"]
            if per_layer.get(keys[0]) is None:
                continue
            layers = np.arange(len(per_layer[keys[0]]))
            for c, (key, label) in enumerate(zip(keys, labels)):
                values = [np.nan if v is None else float(np.mean(v)) for v in per_layer[key]]  # mean over heads
                x = layers - 0.4 + width * (2 * m + c + 0.5)
                ax.bar(x, values, width, label=f"{name}: {label}", color=f"C{2 * m + c}")
        ax.set(xlabel="layer", ylabel=ylabel, title=title)
        ax.set_xticks(layers)
        ax.set_ylim(0, ax.get_ylim()[1] * (1.2 + 0.1 * len(names)))  # room for the legend above the bars
        ax.legend(fontsize=LEGEND_SIZE, loc="upper left")
    return True


# ---------------------------------------------------------------------------
# lab.compare: training curves and per-layer statistics of each variant
# ---------------------------------------------------------------------------


def smooth(values, window):
    """Trailing mean over `window` points (shorter at the start), so curves keep their length."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0 or window <= 1:
        return x
    sums = np.cumsum(np.insert(x, 0, 0.0))
    counts = np.minimum(np.arange(1, len(x) + 1), window)
    return (sums[1:] - sums[np.maximum(0, np.arange(1, len(x) + 1) - window)]) / counts


def plot_training(ax_loss, ax_norm, name, metrics):
    """One run's smoothed train loss (line), val loss (dots) and gradient norm on two axes; returns its colour."""
    steps = [r["step"] for r in metrics["steps"]]
    window = max(1, len(steps) // 50)
    line, = ax_loss.plot(steps, smooth([r["loss"] for r in metrics["steps"]], window), lw=1, label=name)
    evals = metrics["evals"]
    ax_loss.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o", ms=3, color=line.get_color())
    ax_norm.plot(steps, [r["grad_norm"] for r in metrics["steps"]], lw=0.6, alpha=0.8, color=line.get_color(),
                 label=name)
    return line.get_color()


def plot_losses(path, metrics_by_name, title):
    """Loss and gradient-norm curves of every variant, overlaid."""
    fig = new_figure(11, 4)
    ax_loss, ax_norm = fig.subplots(1, 2)
    for name, metrics in metrics_by_name.items():
        plot_training(ax_loss, ax_norm, name, metrics)
    # Start the loss axis below the first steps' loss so that the differences that matter show.
    tails = [r["val_loss"] for m in metrics_by_name.values() for r in m["evals"][1:]]
    if tails:
        ax_loss.set_ylim(min(tails) - 0.1, max(tails) + 0.3)
    ax_loss.set(xlabel="step", ylabel="loss", title="train loss (smoothed) and val loss (dots)")
    ax_norm.set(xlabel="step", ylabel="gradient norm (before clipping)", yscale="log", title="gradient norm")
    ax_loss.legend(fontsize=LEGEND_SIZE)
    subtitle(fig, title)
    return save(fig, path)


def uniform_first_token_attention(seq_len):
    """F-Attn of attention spread evenly over the causal context: mean over t < T of 1 / (t + 1)."""
    return sum(1.0 / (t + 1) for t in range(seq_len)) / seq_len


def plot_emergence(path, metrics_by_name, title):
    """Over training, from each evaluation: F-Attn and, with query classes, the BOS attention
    and mean gate of dormant (solid) and active (dashed) queries per layer."""
    evals = {name: m["evals"] for name, m in metrics_by_name.items()}
    classes = any("bos_attn_dormant" in r for records in evals.values() for r in records)
    layers = max((len(r["bos_attn_dormant"]) for records in evals.values() for r in records
                  if "bos_attn_dormant" in r), default=0)
    panels = [("f_attn", None)] + [(kind, layer) for kind in ("bos_attn", "gate") for layer in range(layers)]
    fig = new_figure(max(6.0, 3.3 * len(panels)), 3.4)  # wide enough for the settings line in a few lines
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for m, (name, records) in enumerate(evals.items()):
        steps = [r["step"] for r in records]
        axes[0].plot(steps, [r["f_attn"] for r in records], color=f"C{m}", label=name)
        for ax, (kind, layer) in zip(axes[1:], panels[1:]):
            for cls, style in (("dormant", "-"), ("active", "--")):
                key = f"{kind}_{cls}"
                values = [np.nan if r.get(key) is None or r[key][layer] is None else r[key][layer] for r in records]
                if not np.all(np.isnan(values)):
                    ax.plot(steps, values, style, color=f"C{m}", label=f"{name}, {cls}")
    axes[0].set(title="F-Attn (attention on token 0)", ylabel="attention probability")
    for ax, (kind, layer) in zip(axes[1:], panels[1:]):
        ax.set(title=f"{'BOS attention' if kind == 'bos_attn' else 'mean gate'}, layer {layer}",
               ylabel="attention on BOS" if kind == "bos_attn" else "gate score")
    for ax in axes:
        ax.set(xlabel="step", ylim=(0, 1))
        if ax.get_legend_handles_labels()[0]:  # a gate panel is empty when no model has a gate
            ax.legend(fontsize=LEGEND_SIZE)
    subtitle(fig, title + ("" if classes else "; no query classes in this dataset"))
    return save(fig, path)


def plot_bos_classes(path, results, title):
    """The BOS and query-class bars (as lab.analyze draws them) for every variant, or None without them."""
    fig = new_figure(12, 3.4)
    if not _plot_bos_classes(fig, list(results), results):
        return None
    subtitle(fig, title)
    return save(fig, path)


def plot_layers(path, results, seq_len, title):
    """Per layer: first-token attention (mean over heads), M-Act and mean gate, one line per variant."""
    fig = new_figure(13, 3.8)
    axes = fig.subplots(1, 3)
    for name, r in results.items():
        per_layer = r["per_layer"]
        layers = range(len(per_layer["m_act"]))
        axes[0].plot(layers, np.mean(per_layer["first_token_attn"], axis=1), marker="o", label=name)
        axes[1].plot(layers, per_layer["m_act"], marker="o", label=name)
        axes[2].plot(layers, per_layer["mean_gate"] if per_layer["mean_gate"] else [np.nan] * len(layers),
                     marker="o", label=name)
    # Without a sink, attention spread evenly over the causal context puts 1/(t+1) on token 0 at
    # query t: H_T / T on average over T queries (0.074 at T = 64), the level to compare against.
    axes[0].axhline(uniform_first_token_attention(seq_len), color="gray", ls=":", label="uniform attention")
    axes[0].set(ylabel="attention on token 0 (alpha_1, mean over heads)", ylim=(0, None),
                title="first-token attention (F-Attn per layer)")
    axes[1].set(ylabel="max |h| of the layer output", yscale="log", title="M-Act per layer")
    axes[2].set(ylabel="mean gate score", ylim=(0, 1), title="mean gate per layer (gated variants)")
    for ax in axes:
        ax.set(xlabel="layer")
        ax.set_xticks(list(layers))
    axes[0].legend(fontsize=LEGEND_SIZE)
    subtitle(fig, title)
    return save(fig, path)


# ---------------------------------------------------------------------------
# lab.sweep: loss against the learning rate
# ---------------------------------------------------------------------------


def plot_loss_vs_lr(path, records_by_variant, summaries, title):
    """Final val loss against the learning rate, one line per variant; diverged runs as x at the init loss."""
    fig = new_figure(7, 4.5)
    ax = fig.subplots()
    for name, records in records_by_variant.items():
        runs = sorted((r for r in records if r["status"] != "crashed"), key=lambda r: r["lr"])
        init = summaries[name]["init_loss"]
        xs = [r["lr"] for r in runs]
        ys = [init if r["status"] == "diverged" else min(r["final_val_loss"], init or math.inf) for r in runs]
        sensitivity = summaries[name]["lr_sensitivity"]
        sensitivity = "-" if sensitivity is None else f"{sensitivity:.3f}"
        line, = ax.plot(xs, ys, marker="o", label=f"{name} (LR sensitivity {sensitivity})")
        diverged = [(r["lr"], init) for r in runs if r["status"] == "diverged"]
        if diverged:
            ax.plot(*zip(*diverged), "x", ms=10, mew=2, color=line.get_color())
    inits = [s["init_loss"] for s in summaries.values() if s["init_loss"] is not None]
    if inits:
        ax.axhline(np.mean(inits), color="gray", ls=":", label="loss at init (x: diverged)")
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="final val loss (capped at init)",
           title="final loss vs learning rate")
    ax.legend(fontsize=LEGEND_SIZE)
    subtitle(fig, title)
    return save(fig, path)


def plot_highest_lr(path, metrics_by_name, lr, title):
    """Loss, gradient norm and max attention logit over training at the highest LR, one line per variant
    (`metrics_by_name`: each run's metrics, as lab.runs.read_metrics gives them)."""
    fig = new_figure(14, 4)
    ax_loss, ax_norm, ax_logit = fig.subplots(1, 3)
    for name, metrics in metrics_by_name.items():
        if not metrics["steps"]:
            continue
        color = plot_training(ax_loss, ax_norm, name, metrics)
        logits = [(r["step"], r["max_attn_logit"]) for r in metrics["evals"] if r.get("max_attn_logit") is not None]
        if logits:
            ax_logit.plot(*zip(*logits), marker="o", color=color, label=name)
        if metrics["diverged"]:
            ax_loss.axvline(metrics["diverged"]["step"], color=color, ls="--", lw=0.8)
    ax_loss.set(xlabel="step", ylabel="loss", title=f"loss at lr {lr:g} (dashed: diverged)")
    ax_norm.set(xlabel="step", ylabel="gradient norm (before clipping)", yscale="log", title="gradient norm")
    ax_logit.set(xlabel="step", ylabel="max attention logit", yscale="log", title="attention-logit growth")
    ax_loss.legend(fontsize=LEGEND_SIZE)
    subtitle(fig, title)
    return save(fig, path)


# ---------------------------------------------------------------------------
# lab.longctx: longer than trained
# ---------------------------------------------------------------------------


def plot_extension(path, groups, multiples, methods):
    """Loss against length per method (one panel per model), and per position at the longest length;
    `groups` as lab.longctx pools its results, `multiples` the evaluated lengths (sorted), `methods` the scalings."""
    fig = new_figure(12, 7)
    axes = fig.subplots(2, len(groups), squeeze=False)
    longest = max(multiples)
    ymax = max(np.mean([r["extension"][m]["loss"][1 if 1 in multiples else multiples[0]] for r in runs])
               for runs in groups.values() for m in methods) + 1.5
    for col, (name, runs) in enumerate(groups.items()):
        block = runs[0]["block_size"]
        for method in methods:
            losses = np.array([[r["extension"][method]["loss"][m] for m in multiples] for r in runs])
            line, = axes[0, col].plot([m * block for m in multiples], losses.mean(0), marker="o", label=method)
            curve = np.mean([r["extension"][method]["per_position"] for r in runs], axis=0)
            axes[1, col].plot(smooth(curve, 16), lw=1, color=line.get_color(), label=method)
        axes[0, col].set_xscale("log", base=2)
        axes[0, col].minorticks_off()
        axes[0, col].set(xlabel="evaluated length (tokens)", ylabel="val loss", ylim=(None, ymax),
                         title=f"{name}: val loss by length")
        axes[0, col].set_xticks([m * block for m in multiples], [str(m * block) for m in multiples])
        axes[1, col].axvline(block, color="gray", ls=":")
        axes[1, col].set(xlabel="position", ylabel="loss (mean of 16 positions)", ylim=(None, ymax),
                         title=f"{name}: loss by position at {longest}x")
        axes[0, col].legend()
    return save(fig, path)


def plot_sinks(path, groups):
    """The sliding-window sink test: loss by position, with and without the sink tokens kept, one panel per model."""
    fig = new_figure(12, 3.6)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (name, runs) in zip(axes, groups.items()):
        s = runs[0]["sinks"]
        for label in s["per_position"]:
            ax.plot(smooth(np.mean([r["sinks"]["per_position"][label] for r in runs], axis=0), 4),
                    lw=1, label=label)
        ax.axvline(s["window"], color="gray", ls=":")
        ax.set(xlabel="position", ylabel="loss (mean of 4 positions)",
               title=f"{name}: window of {s['window']} tokens")
        ax.legend()
    return save(fig, path)
