"""Lesson 3: the spike score and LR sensitivity."""

import math

import numpy as np
import torch

from lab import metrics
from lab import sweep
from course.checks import VOCAB, Exercise, Wrong, expect_number, tiny_model

# ---------------------------------------------------------------------------
# 3.1 The spike score
# ---------------------------------------------------------------------------


def _curves():
    """(description, values, window): made-up loss curves with known spikes."""
    rng = np.random.default_rng(0)
    smooth = 3.0 - np.linspace(0, 1, 300) + 0.01 * rng.standard_normal(300)
    spiky = smooth.copy()
    spiky[[150, 220, 221]] += 1.0  # three big spikes, two in a row
    with_nan = spiky.copy()
    with_nan[100] = math.nan
    flat = np.concatenate([np.ones(30), spiky[:40]])
    return [
        ("a smooth decreasing curve with small noise", smooth, 20),
        ("a curve with three large spikes (two in a row)", spiky, 20),
        ("the same curve with one NaN", with_nan, 20),
        ("a curve that starts with 30 equal values", flat, 20),
        ("a curve shorter than its window", spiky[:15], 20),
        ("the spiky curve with window 100", spiky, 100),
    ]


def _diagnose(spike_score, values, window, expected, got):
    x = np.asarray(values, dtype=np.float64)
    if expected and math.isclose(got * 100, expected, rel_tol=1e-6):
        return "you returned a fraction: the score is a percentage (100 * spikes / judged)"
    finite = x[np.isfinite(x)]
    if len(finite) <= window and got != 0:
        return f"with {len(finite)} values and window {window} no step has a full window before it: return 0.0"
    return ("check which steps are judged (only those with `window` values before them, not counting "
            "the current one, and whose window is not constant) and that NaNs are dropped first")


def check_spike_score(module):
    for description, values, window in _curves():
        expected = metrics.spike_score(values, window)
        got = expect_number(module.spike_score(list(values), window), "spike_score")
        if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9):
            why = _diagnose(module.spike_score, values, window, expected, got)
            raise Wrong(f"for {description} (window {window}) the spike score is {expected:.4g}%, "
                        f"you got {got:.4g}: {why}")
    # Inside train.py's evaluation record.
    original = metrics.spike_score
    gpt, idx = tiny_model(seed=0), torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    losses, norms = list(_curves()[1][1]), list(_curves()[0][1])
    expected = metrics.eval_record(gpt, idx, losses, norms, 20)
    metrics.spike_score = module.spike_score
    try:
        got = metrics.eval_record(gpt, idx, losses, norms, 20)
    finally:
        metrics.spike_score = original
    for key in ("loss_spike_score", "grad_spike_score"):
        if not math.isclose(got[key], expected[key], rel_tol=1e-9, abs_tol=1e-9):
            raise Wrong(f"in train.py's evaluation record, {key} is {got[key]} with yours, {expected[key]} with metrics.py's")
    return "same scores as metrics.py on six curves and in train.py's evaluation record"


# ---------------------------------------------------------------------------
# 3.2 LR sensitivity
# ---------------------------------------------------------------------------

SWEEPS = [  # (description, final losses, loss at init)
    ("three finished runs", [2.5, 2.3, 2.6], 4.4),
    ("a run that diverged (None)", [2.5, 2.3, None], 4.4),
    ("a run that ended above the loss at initialisation", [2.5, 2.3, 5.0], 4.4),
    ("a run with a NaN loss", [2.5, 2.3, math.nan], 4.4),
    ("one run", [2.4], 4.4),
]


def check_lr_sensitivity(module):
    for description, losses, init in SWEEPS:
        expected = sweep.lr_sensitivity(losses, init)
        got = expect_number(module.lr_sensitivity(list(losses), init), "lr_sensitivity")
        if not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            hint = ""
            finished = [x for x in losses if x is not None and math.isfinite(x)]
            if None in losses or any(not math.isfinite(x) for x in losses if x is not None):
                hint = ": a diverged run (None or NaN) counts as the loss at initialisation"
            elif any(x > init for x in finished):
                hint = ": a run that ended above the loss at initialisation counts as that loss (min(loss, init))"
            elif math.isclose(got, expected * len(losses)):
                hint = ": take the mean over the grid, not the sum"
            raise Wrong(f"for {description}, {losses} with loss {init} at initialisation, the LR sensitivity is "
                        f"{expected:.4f}; you got {got:.4f}{hint}")
    records = [dict(status="finished", lr=lr, init_val_loss=4.4, final_val_loss=loss)
               for lr, loss in [(1e-3, 2.5), (1e-2, 2.3), (1e-1, 3.1)]]
    records.append(dict(status="diverged", lr=0.3, init_val_loss=4.4, final_val_loss=None))
    original = sweep.lr_sensitivity
    expected = sweep.summarize(records, 0.1)
    sweep.lr_sensitivity = module.lr_sensitivity
    try:
        got = sweep.summarize(records, 0.1)
    finally:
        sweep.lr_sensitivity = original
    if not math.isclose(got["lr_sensitivity"], expected["lr_sensitivity"], rel_tol=1e-9):
        raise Wrong("in sweep.py's summary your LR sensitivity differs from sweep.py's")
    return "same LR sensitivity as sweep.py on five sweeps and in sweep.py's summary"


EXERCISES = [
    Exercise("3.1", "l3_spike_score.py", "the spike score", check_spike_score),
    Exercise("3.2", "l3_lr_sensitivity.py", "LR sensitivity", check_lr_sensitivity),
]
