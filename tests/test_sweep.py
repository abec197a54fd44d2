"""sweep.py: the LR grid, LR sensitivity by hand, and a tiny sweep that diverges, crashes and restarts. CPU only."""

import json

import pytest

from lab import sweep
import prepare_data
import train


def test_lr_grid_is_log_spaced_and_rounded():
    assert sweep.lr_grid(1e-3, 0.32, 6) == [0.001, 0.0032, 0.01, 0.032, 0.1, 0.32]
    assert sweep.lr_grid(3e-4, 3e-1, 4) == [0.0003, 0.003, 0.03, 0.3]
    assert sweep.lr_grid(1e-2, 1e-2, 1) == [0.01]


def test_lr_sensitivity_by_hand():
    # Loss at init 4.0. Capped at init: 2.0, 1.5, 3.0, 4.0 (diverged), 4.0 (ended above init).
    # Best 1.5; gaps 0.5, 0, 1.5, 2.5, 2.5; mean 7.0 / 5 = 1.4.
    assert sweep.lr_sensitivity([2.0, 1.5, 3.0, None, 5.0], 4.0) == pytest.approx(1.4)
    assert sweep.lr_sensitivity([2.0, 2.0], 4.0) == 0.0
    assert sweep.lr_sensitivity([None, float("nan")], 4.0) == 0.0  # nothing learned anywhere


def record(lr, status, final=None, init=4.0):
    return {"variant": "v", "lr": lr, "status": status, "final_val_loss": final, "init_val_loss": init}


def test_summary_of_a_hand_made_table():
    records = [record(1e-3, "finished", 2.0), record(3e-3, "finished", 1.5), record(1e-2, "finished", 1.6),
               record(3e-2, "crashed", init=None), record(1e-1, "finished", 3.0), record(3e-1, "diverged", 3.9)]
    s = sweep.summarize(records, stable_within=0.1)
    # Crashed runs are left out; the diverged one counts at init: capped 2.0, 1.5, 1.6, 3.0, 4.0 -> mean gap 0.92.
    assert s["lr_sensitivity"] == pytest.approx((0.5 + 0 + 0.1 + 1.5 + 2.5) / 5)
    assert (s["best_loss"], s["best_lr"]) == (1.5, 3e-3)
    assert s["largest_stable_lr"] == 1e-2  # 1.6 <= 1.5 * 1.1; 3.0 is not, and 0.3 diverged
    assert (s["runs"], s["diverged"], s["crashed"], s["init_loss"]) == (5, 1, 1, 4.0)
    table = sweep.format_summary({"v": s})
    assert "| v | 0.920 | 1.5000 | 0.003 | 0.01 | 1/5 | 1 |" in table


def tiny(data_dir, out_dir, *extra):
    return [f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={out_dir}", "--n_layer=1", "--n_head=2",
            "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=10", "--eval_interval=5",
            "--eval_iters=2", "--warmup_iters=2", "--compile=false", "--dtype=float32", "--device=cpu",
            "--progress=false", "--variants=none,elementwise", "--lr_min=1e-3", "--lr_max=1e4", "--lr_points=2",
            *extra]


def test_sweep_records_divergence_and_crash_and_skips_finished_runs(data_dir, tmp_path, monkeypatch, capsys):
    calls, original = [], train.train

    def crashing(model_cfg, cfg, **kwargs):
        out_dir = f"--out_dir={cfg.out_dir}"
        calls.append(out_dir)
        if out_dir.endswith("elementwise/lr_0.001") and len(calls) < 5:
            raise RuntimeError("boom")
        return original(model_cfg, cfg, **kwargs)

    monkeypatch.setattr(train, "train", crashing)
    out = tmp_path / "sweep"
    summaries = sweep.main(tiny(data_dir, out))
    assert len(calls) == 4
    printed = capsys.readouterr().out
    assert printed.count("settings of every run:") == 1 and "config:" not in printed
    results = sweep.load_results(out / "results.jsonl")
    status = {key: r["status"] for key, r in results.items()}
    # lr 1e4 blows the weights up within a few steps: a non-finite loss, recorded as a divergence.
    assert status == {("none", "0.001"): "finished", ("none", "1e+04"): "diverged",
                      ("elementwise", "0.001"): "crashed", ("elementwise", "1e+04"): "diverged"}
    assert results[("elementwise", "0.001")]["error"] == "RuntimeError: boom"
    assert results[("none", "1e+04")]["diverged_at"] is not None
    finished = results[("none", "0.001")]
    assert finished["final_val_loss"] < finished["init_val_loss"] and finished["max_attn_logit"] is not None
    assert summaries["none"]["diverged"] == 1 and summaries["elementwise"]["crashed"] == 1
    assert summaries["none"]["lr_sensitivity"] == pytest.approx(
        (finished["init_val_loss"] - finished["final_val_loss"]) / 2)
    assert "| none |" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["lrs"] == [0.001, 10000.0]

    # Restarted: only the crashed run trains again; restarted once more, nothing does.
    sweep.main(tiny(data_dir, out))
    assert calls[4:] == [f"--out_dir={out / 'elementwise' / 'lr_0.001'}"]
    summaries = sweep.main(tiny(data_dir, out))
    assert len(calls) == 5 and summaries["elementwise"]["crashed"] == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 5

    # Other training settings in the same folder are refused rather than mixed in.
    with pytest.raises(sweep.ConfigError, match="holds a sweep with other settings"):
        sweep.main(tiny(data_dir, out, "--n_embd=32"))


def test_a_settings_error_stops_the_sweep_before_anything_is_written(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    with pytest.raises(sweep.ConfigError, match="no prepared dataset 'nothing'"):
        sweep.main(tiny(data_dir, out, "--dataset=nothing"))
    assert not out.exists()

    # One that only training finds stops the sweep too, rather than being recorded as a crash.
    def refusing(model_cfg, cfg, **kwargs):
        raise sweep.ConfigError("a setting the run refuses")

    monkeypatch.setattr(train, "train", refusing)
    with pytest.raises(sweep.ConfigError, match="a setting the run refuses"):
        sweep.main(tiny(data_dir, out))
    assert not (out / "results.jsonl").exists()
    monkeypatch.undo()
    corrected = tiny(data_dir, out, "--variants=none", "--lr_max=1e-3", "--lr_points=1")
    with prepare_data.hold(out):  # while another sweep holds the folder, this one stops at once
        with pytest.raises(sweep.ConfigError, match=f"{out} is in use by another run"):
            sweep.main(corrected)
    sweep.main(corrected)
    assert sweep.load_results(out / "results.jsonl")[("none", "0.001")]["status"] == "finished"


def test_help_shows_the_sweeps_own_defaults(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows if r.startswith("  --out_dir=")] == ["--out_dir=runs/sweep"]
    assert any(r.startswith("  --max_iters=300 ") for r in rows)
