"""Stability at high learning rates: a log-spaced LR grid for each variant, and its LR sensitivity.

    python -m lab.sweep                                              # 4 variants x 6 LRs 1e-3..0.32, short CPU runs
    python -m lab.sweep --lr_min=3e-4 --lr_max=3e-1 --lr_points=7    # Wortsman et al.'s grid
    python -m lab.sweep --variants=none,elementwise --max_iters=1000 --n_layer=6 --out_dir=runs/sweep-long

Each (variant, learning rate) pair is one run in out_dir/VARIANT/lr_LR, trained
as lab.compare trains (same seed, data order and settings; min_lr is
learning_rate * min_lr_ratio). Each run appends one JSON line to
out_dir/results.jsonl: its status (finished, diverged or crashed), the val loss
at initialisation, at the end and at best, loss and grad-norm spike scores, the
largest gradient norm and the max attention logit at each evaluation (the
per-step curves are in the run's metrics.jsonl). A diverging or crashing run is
recorded and the sweep goes on; a settings error stops it before anything is written. Started again with the same settings, the sweep
skips the finished and diverged runs and retries crashed ones (an interrupted
run resumes from its checkpoint); new variants or learning rates are added.

Then, per variant (printed, and in out_dir/summary.md and summary.json):
  LR sensitivity     Wortsman et al. 2023: the mean over the grid of
                     min(final loss, loss at init) - best final loss; a diverged
                     run counts at the loss at init. Lower is more robust to the LR.
  best loss, at LR   the lowest final val loss on the grid and its learning rate
  largest stable LR  the largest LR whose run did not diverge and ended within
                     stable_within (a fraction) of the variant's best loss
Figures (with matplotlib): out_dir/loss_vs_lr.png and out_dir/highest_lr.png.

Training keys default as in train.py (see below), except for a short CPU
budget per run: max_iters=300, warmup_iters=30, eval_interval=100,
eval_iters=10, progress=false. learning_rate and min_lr are set per run.
"""

import json
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab import runs
from lab import plots
import prepare_data
from configurable import ConfigError, opt, parse_args, run_main
from model import GPTConfig
from train import TrainConfig

# The default budget per run: short enough for the default 4 x 6 grid on a laptop CPU.
TRAIN_DEFAULTS = {"max_iters": 300, "warmup_iters": 30, "eval_interval": 100, "eval_iters": 10, "progress": False}
PER_RUN_KEYS = ("learning_rate", "min_lr")


@dataclass
class SweepConfig:
    variants: str = opt("none,elementwise,headwise,qk_norm", "comma-separated variants (as in lab.compare)")
    lr_min: float = opt(1e-3, "smallest learning rate of the grid")
    lr_max: float = opt(0.32, "largest learning rate of the grid")
    lr_points: int = opt(6, "learning rates, log-spaced from lr_min to lr_max (rounded to 2 digits)")
    min_lr_ratio: float = opt(0.1, "each run's cosine decays to learning_rate * min_lr_ratio")
    stable_within: float = opt(0.1, "a run is stable if it did not diverge and ended within this fraction "
                                    "of the variant's best loss")
    out_dir: str = opt("runs/sweep", "folder for the runs, results.jsonl, the summary and the figures")

    def __post_init__(self):
        if not 0 < self.lr_min <= self.lr_max:
            raise ConfigError(f"need 0 < lr_min <= lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}")
        if self.lr_points < 1 or (self.lr_points == 1 and self.lr_min != self.lr_max):
            raise ConfigError("lr_points must be at least 1 (and 1 only when lr_min == lr_max)")
        if not 0 <= self.min_lr_ratio <= 1 or self.stable_within < 0:
            raise ConfigError("min_lr_ratio must be in [0, 1] and stable_within at least 0")


def lr_grid(lr_min, lr_max, points):
    """`points` log-spaced learning rates from lr_min to lr_max, rounded to 2 significant digits."""
    return list(dict.fromkeys(float(f"{lr:.2g}") for lr in np.geomspace(lr_min, lr_max, points)))


def lr_key(lr):
    return f"{lr:.3g}"


# ---------------------------------------------------------------------------
# Runs and the results file
# ---------------------------------------------------------------------------


def sweep_run(name, lr, settings, run_dir):
    """Train one (variant, lr) run; its results record. A crash is caught and recorded."""
    start = time.perf_counter()
    record = {"variant": name, "lr": lr, "run_dir": str(run_dir)}
    try:
        runs.run_variant(settings, run_dir)
    except ConfigError:
        raise  # a settings error is no property of the learning rate: it stops the sweep
    except Exception as e:  # noqa: BLE001 - any failure of one run is recorded; Ctrl-C still stops the sweep
        traceback.print_exc()
        return {**record, "status": "crashed", "error": f"{type(e).__name__}: {e}",
                "wall_s": time.perf_counter() - start}
    stats = runs.training_stats(runs.read_metrics(run_dir), settings["spike_window"])
    logits = [value for _, value in stats["max_attn_logit_curve"]]
    return {**record, "status": "diverged" if stats["diverged_at"] is not None else "finished", **stats,
            "max_attn_logit": max(logits, default=None), "wall_s": time.perf_counter() - start}


def outcome(record):
    if record["status"] == "finished":
        return f"finished, final val loss {record['final_val_loss']:.4f}"
    if record["status"] == "diverged":
        return f"diverged at step {record['diverged_at']}"
    return f"crashed: {record['error']}"


def load_results(path):
    """The latest record of each (variant, lr) in results.jsonl."""
    return {(record["variant"], lr_key(record["lr"])): record for record in runs.json_lines(path)}


def append_result(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def check_sweep_settings(path, settings):
    """Write the sweep's shared settings to sweep.json, or check them against an earlier start."""
    path = Path(path)
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (ValueError, RecursionError):
            raise ConfigError(f"{path} is not the JSON this sweep wrote: delete that folder to start over") from None
        differ = runs.settings_differ(settings, stored)
        if differ:
            raise ConfigError(f"{path.parent} holds a sweep with other settings ({'; '.join(differ[:3])}): "
                              "choose another --out_dir, or delete that folder to start over")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1) + "\n")


# ---------------------------------------------------------------------------
# LR sensitivity and the summary per variant
# ---------------------------------------------------------------------------


def lr_sensitivity(final_losses, init_loss):
    """Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
    instabilities"): mean over the grid of min(final loss, loss at init) - best, where best
    is the lowest of those values.

    `final_losses` has one entry per learning rate, None for a diverged run,
    which counts at the loss at initialisation, as does any run that ended above it.
    """
    capped = [init_loss if loss is None or not math.isfinite(loss) else min(loss, init_loss)
              for loss in final_losses]
    best = min(capped)
    return sum(loss - best for loss in capped) / len(capped)


def final_loss(record):
    """A run's final val loss for the sensitivity: None when it diverged."""
    return None if record["status"] == "diverged" else record["final_val_loss"]


def summarize(records, stable_within):
    """One variant's LR sensitivity, best loss and LR, and largest stable LR, from its runs' records.

    Crashed runs say nothing about the learning rate and are left out (and counted).
    The loss at initialisation is measured at step 0; it is the same for every LR
    (same seed, same initial weights, same evaluation batches).
    """
    judged = sorted((r for r in records if r["status"] != "crashed"), key=lambda r: r["lr"])
    summary = {"runs": len(judged), "diverged": sum(r["status"] == "diverged" for r in judged),
               "crashed": len(records) - len(judged), "lr_sensitivity": None, "best_loss": None,
               "best_lr": None, "largest_stable_lr": None, "init_loss": None}
    inits = [r["init_val_loss"] for r in judged if r.get("init_val_loss") is not None]
    if not judged or not inits:
        return summary
    init = summary["init_loss"] = inits[0]
    losses = [final_loss(r) for r in judged]
    summary["lr_sensitivity"] = lr_sensitivity(losses, init)
    finished = [(loss, r["lr"]) for loss, r in zip(losses, judged) if loss is not None]
    if finished:
        summary["best_loss"], summary["best_lr"] = min(finished)
        stable = [lr for loss, lr in finished if loss <= summary["best_loss"] * (1 + stable_within)]
        summary["largest_stable_lr"] = max(stable)
    return summary


def _cell(value, fmt):
    return "-" if value is None else fmt.format(value)


def format_summary(summaries):
    lines = ["| variant | LR sensitivity | best final loss | at LR | largest stable LR | diverged | crashed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {_cell(s['lr_sensitivity'], '{:.3f}')} | {_cell(s['best_loss'], '{:.4f}')} | "
                     f"{_cell(s['best_lr'], '{:g}')} | {_cell(s['largest_stable_lr'], '{:g}')} | "
                     f"{s['diverged']}/{s['runs']} | {s['crashed']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------




# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv=None):
    """Run the missing runs of the grid, then summarise every variant; returns the summaries."""
    sweep_cfg, model_cfg, train_cfg = parse_args(
        [SweepConfig, GPTConfig, TrainConfig], argv, prog="-m lab.sweep",
        description=f"{__doc__}\n{runs.variants_help()}", base=TRAIN_DEFAULTS)
    shared = runs.shared_settings(model_cfg, train_cfg)
    for key in PER_RUN_KEYS:
        del shared[key]
    names = runs.parse_variants(sweep_cfg.variants)
    lrs = lr_grid(sweep_cfg.lr_min, sweep_cfg.lr_max, sweep_cfg.lr_points)
    grid = {(name, lr): {**runs.run_settings(shared, name), "learning_rate": lr,
                         "min_lr": lr * sweep_cfg.min_lr_ratio} for name in names for lr in lrs}
    runs.check_runs(grid.values())
    with prepare_data.hold(sweep_cfg.out_dir):
        return run_sweep(grid, shared, names, lrs, sweep_cfg)


def run_sweep(grid, shared, names, lrs, sweep_cfg):
    """Train the grid's missing runs into out_dir, then summarise every variant."""
    out_dir = Path(sweep_cfg.out_dir)
    check_sweep_settings(out_dir / "sweep.json", {**shared, "min_lr_ratio": sweep_cfg.min_lr_ratio})
    runs.print_settings(shared, names)
    results_path = out_dir / "results.jsonl"
    done = load_results(results_path)
    for (name, lr), settings in grid.items():
        previous = done.get((name, lr_key(lr)))
        if previous is not None and previous["status"] != "crashed":
            print(f"{name} lr {lr:g}: {previous['status']} earlier, skipped")
            continue
        print(f"{name} lr {lr:g}: training", flush=True)
        record = sweep_run(name, lr, settings, out_dir / name / f"lr_{lr:g}")
        append_result(results_path, record)
        print(f"{name} lr {lr:g}: {outcome(record)} ({record['wall_s']:.0f} s)", flush=True)

    results = load_results(results_path)
    by_variant = {name: [results[(name, lr_key(lr))] for lr in lrs if (name, lr_key(lr)) in results]
                  for name in names}
    summaries = {name: summarize(records, sweep_cfg.stable_within) for name, records in by_variant.items()}
    lr_text = (f"{len(lrs)} peak LRs {lrs[0]:g}..{lrs[-1]:g} (cosine to LR x {sweep_cfg.min_lr_ratio:g})")
    title = runs.describe_settings(shared, lr_text)
    table = f"{format_summary(summaries)}\n\n{title}; stable: within {sweep_cfg.stable_within:.0%} of the best loss"
    (out_dir / "summary.md").write_text(table + "\n")
    (out_dir / "summary.json").write_text(json.dumps({"settings": shared, "lrs": lrs, "variants": summaries},
                                                     indent=1) + "\n")
    print(f"\n{table}\nresults: {results_path}, {out_dir / 'summary.md'}, {out_dir / 'summary.json'}")
    if plots.has_matplotlib():
        top = {name: runs.read_metrics(out_dir / name / f"lr_{lrs[-1]:g}") for name in names}
        print(f"figures: {plots.plot_loss_vs_lr(out_dir / 'loss_vs_lr.png', by_variant, summaries, title)}, "
              f"{plots.plot_highest_lr(out_dir / 'highest_lr.png', top, lrs[-1], title)}")
    return summaries


if __name__ == "__main__":
    run_main(main)
