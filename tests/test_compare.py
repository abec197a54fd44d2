"""compare.py: variants, run reuse, the training statistics, and a tiny end-to-end comparison. CPU only."""

import builtins
import importlib.util
import json
import math
import warnings

import pytest
import torch

from lab import compare, runs
from lab import plots
import prepare_data
import train
from configurable import ConfigError, parse_args
from model import GPTConfig
from train import TrainConfig


def tiny(data_dir, out_dir, *extra):
    """A run of a few seconds: one small layer, ten steps."""
    return [f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={out_dir}", "--n_layer=1", "--n_head=2",
            "--n_embd=16", "--block_size=16", "--batch_size=4", "--max_iters=10", "--eval_interval=5",
            "--eval_iters=2", "--warmup_iters=2", "--compile=false", "--dtype=float32", "--device=cpu",
            "--progress=false", *extra]


def count_training(monkeypatch):
    """Record the out_dir of every train.train call, still training for real."""
    calls, original = [], train.train

    def counted(model_cfg, cfg, **kwargs):
        calls.append(cfg.out_dir)
        return original(model_cfg, cfg, **kwargs)

    monkeypatch.setattr(train, "train", counted)
    return calls


def test_variants_set_every_gate_key():
    plain = runs.variant_settings("none")
    assert plain["gate"] == "none" and plain["qk_norm"] is False and plain["gate_position"] == "sdpa"
    assert runs.variant_settings("qk_norm") == {**plain, "qk_norm": True}
    assert runs.variant_settings("elementwise+qk_norm") == {**plain, "gate": "elementwise", "qk_norm": True}
    # An ablation alone means the paper's G1 elementwise gate with that one change.
    assert runs.variant_settings("value") == {**plain, "gate": "elementwise", "gate_position": "value"}
    assert runs.variant_settings("headwise+shared")["gate_heads"] == "shared"
    assert runs.variant_settings("additive")["gate_activation"] == "silu"
    assert runs.parse_variants(" none, headwise ,none") == ["none", "headwise"]


def test_variant_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown variant 'bogus': choose from none, elementwise"):
        runs.parse_variants("none,bogus")
    with pytest.raises(ConfigError, match="'ns_sigmoid' sets gate_activation=ns_sigmoid"):
        runs.variant_settings("additive+ns_sigmoid")
    with pytest.raises(ConfigError, match="variant 'none\\+value': gate_position=value has no effect"):
        compare.main(["--variants=none+value"])
    with pytest.raises(ConfigError, match="'gate' is set by each variant"):
        compare.main(["--gate=headwise"])
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        compare.main(["--lerning_rate=1e-3"])


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_stats_from_a_synthetic_run(tmp_path):
    # 300 steps of a gently wobbling loss with one jump at step 250: OLMo 2's score judges the
    # 200 steps that have a full window of 100 before them, and finds 1 spike: 0.5%.
    steps = [{"step": s, "loss": 2.0 + 0.01 * math.sin(s) + (5.0 if s == 250 else 0.0),
              "grad_norm": 1.0 + 0.01 * math.cos(s), "tokens_per_s": 1000.0 + s} for s in range(300)]
    evals = [{"step": 0, "val_loss": 4.0, "max_attn_logit": 1.0}, {"step": 150, "val_loss": 2.5},
             {"step": 300, "val_loss": 2.1, "max_attn_logit": 3.0}]
    resumed = [{"step": 0, "loss": 99.0, "grad_norm": 99.0, "tokens_per_s": 1.0}]  # replaced by the later record
    write_metrics(tmp_path / "metrics.jsonl", resumed + steps + evals)
    stats = runs.training_stats(runs.read_metrics(tmp_path), spike_window=100)
    assert stats["loss_spike_score"] == pytest.approx(0.5)
    assert stats["grad_spike_score"] == 0.0
    assert stats["final_val_loss"] == 2.1 and stats["init_val_loss"] == 4.0 and stats["best_val_loss"] == 2.1
    assert stats["max_grad_norm"] == pytest.approx(1.01, abs=1e-3) and stats["steps"] == 300
    assert stats["tokens_per_s"] == pytest.approx(1149.5) and stats["diverged_at"] is None
    assert stats["max_attn_logit_curve"] == [(0, 1.0), (300, 3.0)]

    write_metrics(tmp_path / "metrics.jsonl", steps[:20] + evals[:1] + [{"step": 20, "diverged": True}])
    assert runs.training_stats(runs.read_metrics(tmp_path), 100)["diverged_at"] == 20
    # Resumed past the divergence (from a checkpoint before it): the run recovered.
    write_metrics(tmp_path / "metrics.jsonl", steps[:20] + [{"step": 20, "diverged": True}] + steps[15:30])
    assert runs.read_metrics(tmp_path)["diverged"] is None


def test_uniform_first_token_attention():
    # Evenly spread causal attention: H_T / T, what an untrained model shows as F-Attn.
    assert plots.uniform_first_token_attention(1) == 1.0
    assert plots.uniform_first_token_attention(64) == pytest.approx(0.0741, abs=1e-4)


def test_compare_end_to_end(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    calls = count_training(monkeypatch)
    results = compare.main(tiny(data_dir, out, "--variants=none,elementwise"))
    assert [c.rsplit("/", 1)[-1] for c in calls] == ["none", "elementwise"]
    printed = capsys.readouterr().out
    assert "| | none | elementwise |" in printed
    for label, _, _ in compare.TABLE_ROWS:
        assert f"| {label} |" in printed
    assert results["none"]["mean_gate"] is None and 0 < results["elementwise"]["mean_gate"] < 1
    assert results["elementwise"]["params"] > results["none"]["params"]  # the gate's extra columns
    assert results["none"]["final_val_loss"] < results["none"]["init_val_loss"]
    assert "| | none | elementwise |" in (out / "compare.md").read_text()
    report = json.loads((out / "compare.json").read_text())
    assert set(report["models"]) == {"none", "elementwise"} and report["settings"]["max_iters"] == 10
    if importlib.util.find_spec("matplotlib"):
        assert (out / "loss.png").stat().st_size > 0 and (out / "layers.png").stat().st_size > 0
    else:
        assert "figures skipped: pip install matplotlib" in printed

    # Again, without matplotlib: the finished runs are reused, the table is printed, figures are skipped.
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    again = compare.main(tiny(data_dir, out, "--variants=none,elementwise"))
    monkeypatch.setattr(builtins, "__import__", real_import)
    printed = capsys.readouterr().out
    assert len(calls) == 2 and "none: reused" in printed and "figures skipped: pip install matplotlib" in printed
    assert again["none"]["final_val_loss"] == results["none"]["final_val_loss"]

    # Other settings in the same folder stop with a message, unless --fresh retrains.
    with pytest.raises(ConfigError, match="holds a run with other settings \\(max_iters: 10 -> 12\\).*--fresh"):
        compare.main(tiny(data_dir, out, "--variants=none", "--max_iters=12"))
    # --fresh with a setting that fails only when training starts: nothing is deleted.
    with pytest.raises(ConfigError, match="no prepared dataset 'nothing'"):
        compare.main(tiny(data_dir, out, "--variants=none", "--max_iters=12", "--fresh", "--dataset=nothing"))
    assert len(calls) == 2 and train.load_checkpoint(out / "none" / "ckpt.pt")["step"] == 10
    capsys.readouterr()
    compare.main(tiny(data_dir, out, "--variants=none", "--max_iters=12", "--fresh"))
    assert len(calls) == 3 and train.load_checkpoint(out / "none" / "ckpt.pt")["step"] == 12
    assert [r["step"] for r in runs.read_metrics(out / "none")["steps"]] == list(range(12))
    printed = capsys.readouterr().out
    assert printed.count("settings of every run:") == 1 and "config:" not in printed

    # A second compare.py on the same folder stops at once.
    with prepare_data.hold(out):
        with pytest.raises(ConfigError, match=f"{out} is in use by another run"):
            compare.main(tiny(data_dir, out, "--variants=none", "--max_iters=12"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fresh_with_a_device_this_machine_lacks_deletes_nothing(data_dir, tmp_path):
    out = tmp_path / "cmp"
    compare.main(tiny(data_dir, out, "--variants=none"))
    with pytest.raises(ConfigError, match="PyTorch sees no CUDA GPU"):
        compare.main(tiny(data_dir, out, "--variants=none", "--fresh", "--device=cuda"))
    assert train.load_checkpoint(out / "none" / "ckpt.pt")["step"] == 10


def test_an_interrupted_run_is_resumed_then_reused(data_dir, tmp_path, interrupted_after):
    model_cfg, train_cfg = parse_args([GPTConfig, TrainConfig], tiny(data_dir, "unused"))
    settings = runs.run_settings(runs.shared_settings(model_cfg, train_cfg), "none")
    run_dir = tmp_path / "none"
    with interrupted_after(7):
        runs.run_variant(settings, run_dir)
    assert train.load_checkpoint(run_dir / "ckpt.pt")["step"] == 5
    assert runs.run_variant(settings, run_dir) == "resumed"
    assert train.load_checkpoint(run_dir / "ckpt.pt")["step"] == 10
    assert runs.run_variant(settings, run_dir) == "reused"


def test_help_lists_out_dir_once(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--help"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  --out_dir=")]
    assert rows == [next(r for r in rows if "runs/compare" in r)]


@pytest.mark.skipif(not importlib.util.find_spec("matplotlib"), reason="needs matplotlib")
def test_emergence_figure_of_a_plain_model_alone_draws_without_warnings(tmp_path):
    # A plain model has no gate, so the gate panels stay empty: they must not ask for a legend.
    records = [{"step": step, "f_attn": 0.1, "bos_attn_dormant": [0.5, 0.1], "bos_attn_active": [0.0, 0.1],
                "gate_dormant": None, "gate_active": None} for step in (0, 100)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plots.plot_emergence(tmp_path / "emergence.png", {"none": {"evals": records}}, "plain only")
    assert path.stat().st_size > 0


def test_run_histories_that_are_damaged_are_one_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 2.0}\n{"step": 1, "lo')  # the last line, cut short by a kill
    assert runs.json_lines(path) == [{"step": 0, "loss": 2.0}]
    for damage in ("[" * 200_000 + "]" * 200_000, "not json"):  # nested too deeply to read; not JSON
        path.write_text('{"step": 0, "loss": 2.0}\n' + damage + '\n{"step": 1, "loss": 1.0}\n')
        with pytest.raises(ConfigError) as err:
            runs.read_metrics(tmp_path)
        assert str(err.value).startswith(f"{path} line 2 is not a JSON record") and "\n" not in str(err.value)
    assert runs.json_lines(tmp_path / "missing.jsonl") == []


def test_the_settings_line_counts_in_the_singular(data_dir):
    # One layer and one head: "1 layer", "1 head", never "1 heads".
    model_cfg, train_cfg = parse_args([GPTConfig, TrainConfig], tiny(data_dir, "unused", "--n_head=1", "--n_embd=8"))
    line = runs.describe_settings(runs.shared_settings(model_cfg, train_cfg))
    assert "1 layer x 8 wide, 1 head, " in line and "10 steps" in line
    model_cfg, train_cfg = parse_args([GPTConfig, TrainConfig], tiny(data_dir, "unused"))
    assert "1 layer x 16 wide, 2 heads, " in runs.describe_settings(runs.shared_settings(model_cfg, train_cfg))
