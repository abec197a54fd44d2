import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

from lab import analyze
from lab import metrics
from lab import plots
import prepare_data
import train
from model import GPTConfig
from configurable import ConfigError, parse_args


# ---------------------------------------------------------------------------
# Checkpoints, the command line and training-time logging
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(data_dir):
    """A gated and an ungated model trained briefly on the small dataset, in its folder."""
    out = {}
    for gate in ("elementwise", "none"):
        out[gate] = data_dir / gate
        model_cfg, cfg = parse_args([GPTConfig, train.TrainConfig], [
            f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={out[gate]}", f"--gate={gate}", "--n_layer=2",
            "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--learning_rate=3e-3",
            "--warmup_iters=2", "--max_iters=10", "--eval_interval=5", "--eval_iters=2", "--spike_window=5",
            "--progress=false", "--device=cpu"])
        train.train(model_cfg, cfg, on_eval=metrics.eval_hook(cfg.spike_window))  # the lab's measurements
    return out


def test_train_logs_sink_activation_gate_and_spike_numbers_through_the_labs_hook(runs, data_dir, tmp_path):
    train.main([f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={tmp_path}", "--n_layer=1", "--n_head=2",
                "--n_embd=16", "--block_size=16", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
                "--progress=false", "--device=cpu"])
    alone = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [set(r) for r in alone if "val_loss" in r] == [{"step", "train_loss", "val_loss"}] * 2  # train.py alone
    records = [json.loads(line) for line in open(runs["elementwise"] / "metrics.jsonl")]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 5, 10]
    for key in ("f_attn", "sink_1", "m_act", "mean_gate", "max_attn_logit", "loss_spike_score", "grad_spike_score"):
        assert all(isinstance(r[key], float) for r in evals), key
    ungated = [json.loads(line) for line in open(runs["none"] / "metrics.jsonl")]
    assert all(r["mean_gate"] is None for r in ungated if "val_loss" in r)
    # The logged numbers are model_stats of the first val batch, cropped to 64 tokens (here the block, 32).
    ckpt = train.load_checkpoint(runs["elementwise"] / "ckpt.pt")
    runtime = train.Runtime(torch.device("cpu"), torch.float32)
    folder = runs["elementwise"].parent / "tiny"
    probe = train.Batches(folder, 32, 8, runtime, ckpt["config"]["seed"]).eval_set("val", 1)[0][0]
    stats = metrics.model_stats(train.model_from_checkpoint(ckpt), [probe])
    assert evals[-1]["f_attn"] == pytest.approx(stats["f_attn"])
    assert evals[-1]["m_act"] == pytest.approx(stats["m_act"])
    assert len(ckpt["history"]["loss"]) == len(ckpt["history"]["grad_norm"]) == 10
    with pytest.raises(ConfigError, match="'spike_window' must be at least 1"):
        train.main(["--spike_window=0"])


def test_analyze_checkpoint(runs):
    path = runs["elementwise"] / "ckpt.pt"
    result = analyze.analyze_checkpoint(path, num_sequences=10, seq_len=16, batch_size=4, layer=1)
    assert math.isfinite(result["val_loss"]) and result["val_loss"] < math.log(prepare_data.load_meta(
        runs["elementwise"].parent / "tiny")["vocab_size"])
    assert result["step"] == 10 and result["config"]["gate"] == "elementwise"
    assert result["params"] == train.model_from_checkpoint(train.load_checkpoint(path)).num_params()
    attn_map = np.array(result["attn_map"]["per_head"])
    assert attn_map.shape == (2, 16, 16) and np.allclose(attn_map.sum(-1), 1.0)
    assert 0 <= result["f_attn"] <= 1 and 0 < result["mean_gate"] < 1
    assert analyze.analyze_checkpoint(path, num_sequences=10, seq_len=16, batch_size=4)["f_attn"] == result["f_attn"]
    train_split = analyze.analyze_checkpoint(path, split="train", num_sequences=4, seq_len=16)
    assert "train_loss" in train_split and train_split["f_attn"] != result["f_attn"]


def test_analyze_errors(runs):
    path = runs["elementwise"] / "ckpt.pt"
    with pytest.raises(ConfigError, match="seq_len=64 is longer than the block_size=32"):
        analyze.analyze_checkpoint(path)
    with pytest.raises(ConfigError, match="layer=2 is not a layer"):
        analyze.analyze_checkpoint(path, seq_len=16, layer=2)
    with pytest.raises(ConfigError, match="'split'"):
        analyze.main([f"--checkpoints={path}", "--split=test"])
    with pytest.raises(ConfigError, match="no checkpoints"):
        analyze.main([])
    with pytest.raises(ConfigError, match="no checkpoint at"):
        analyze.main([f"--checkpoints={runs['none'].parent / 'missing.pt'}"])


def test_cli_prints_a_table_and_writes_report_and_figures(runs, tmp_path, capsys, monkeypatch):
    gated, plain = runs["elementwise"] / "ckpt.pt", runs["none"]  # a run folder works too
    common = [f"--checkpoints={gated},{plain}", "--num_sequences=8", "--seq_len=16", "--layer=1",
              f"--report={tmp_path / 'report.json'}"]
    results = analyze.main([*common, f"--fig_dir={tmp_path / 'figures'}"])
    out = capsys.readouterr().out
    assert list(results) == [str(gated), str(plain / "ckpt.pt")]
    for label in ("val loss", "F-Attn", "Sink_1 %", "M-Act", "max/median", "max attn logit", "mean gate",
                  "gate < 0.1", "|attn out| < 1e-2"):
        assert label in out
    assert str(gated) in out.splitlines()[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["seq_len"] == 16
    assert report["models"][str(gated)]["f_attn"] == pytest.approx(results[str(gated)]["f_attn"])
    assert report["models"][str(plain / "ckpt.pt")]["mean_gate"] is None
    assert "attn_map" not in report["models"][str(gated)]
    if importlib.util.find_spec("matplotlib"):
        names = sorted(p.name for p in (tmp_path / "figures").iterdir())
        assert names == ["attention_map_layer1.png", "first_token_attention.png", "gate_scores.png",
                         "massive_activations.png"]
    assert "val loss (these 8 sequences)" in out  # not train.py's evaluation loss
    assert "loss change, token 0 key masked" in out and "loss change, gates forced open" in out
    assert "BOS attn" not in out  # this dataset has no BOS token
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # as if matplotlib were not installed
    assert plots.plot_figures(results, tmp_path / "no_figures", layer=1) == []
    assert "figures skipped: pip install matplotlib" in capsys.readouterr().out
    assert not (tmp_path / "no_figures").exists()


def test_by_default_the_report_and_figures_go_under_runs_analyze(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    analyze.main([f"--checkpoints={runs['none']}", "--num_sequences=4", "--seq_len=16"])
    out = capsys.readouterr().out
    assert "report: runs/analyze/analysis.json" in out and (tmp_path / "runs/analyze/analysis.json").is_file()
    if importlib.util.find_spec("matplotlib"):
        assert "figure: runs/analyze/figures/first_token_attention.png" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_runtime_keys_as_every_script_takes_them(runs, monkeypatch, capsys):
    threads = []
    setup = train.setup_runtime
    monkeypatch.setattr(train, "setup_runtime", lambda device, dtype, n=0: threads.append(n) or setup(device, dtype, 0))
    analyze.main([f"--checkpoints={runs['none']}", "--num_sequences=4", "--seq_len=16", "--threads=1",
                  "--device=cpu", "--report=", "--fig_dir="])
    assert threads == [1]
    with pytest.raises(ConfigError, match="threads=-1 cannot be negative"):
        analyze.main([f"--checkpoints={runs['none']}", "--threads=-1"])
    with pytest.raises(ConfigError, match="bad value 'gpu' for 'device'"):
        analyze.main([f"--checkpoints={runs['none']}", "--device=gpu"])
