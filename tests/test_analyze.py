import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

import analyze
import prepare_data
import train
from configurable import ConfigError
from model import GPT, GPTConfig


def tiny_gpt(**kw):
    torch.manual_seed(0)
    config = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**config, **kw})).eval()


# ---------------------------------------------------------------------------
# Attention sinks on hand-built models
# ---------------------------------------------------------------------------


def test_a_model_forced_onto_token_0_has_f_attn_1_and_sink_1_100():
    """Position 0 embeds along channel 0, later positions along channel 1; every
    head's key is +/- along (e0 - e1) and its query along (e0 + e1), so each
    query's logit is large for token 0 and as negative for the rest."""
    model = tiny_gpt(gate="none")
    C, D = 16, 8
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wpe.weight[0, 0] = 1.0
        model.transformer.wpe.weight[1:, 1] = 1.0
        for block in model.transformer.h:
            block.attn.c_proj.weight.zero_()  # the residual stream stays the same from layer to layer
            block.mlp.c_proj.weight.zero_()
            qkv = block.attn.c_attn.weight
            qkv.zero_()
            for head in range(2):
                qkv[head * D, :2] = torch.tensor([3.0, 3.0])
                qkv[C + head * D, :2] = torch.tensor([3.0, -3.0])
    stats = analyze.model_stats(model, [torch.randint(0, 11, (3, 16)) for _ in range(2)])
    assert stats["f_attn"] == pytest.approx(1.0)
    assert stats["sink_1"] == 100.0
    assert np.allclose(stats["per_layer"]["first_token_attn"], 1.0)
    # ln(e0) = (e0 - 1/C) / sigma with sigma^2 = 1/C - 1/C^2; q.k0 / sqrt(D) by hand:
    sigma2 = 1 / C - 1 / C ** 2
    assert stats["max_attn_logit"] == pytest.approx(9 * (1 - 2 / C) / sigma2 / math.sqrt(D), rel=1e-3)
    assert stats["mean_gate"] is None and stats["gate_below_0.1"] is None and stats["gate_hist"] is None


def test_uniform_causal_attention_gives_alpha_1_equal_to_harmonic_mean():
    """Zero queries make every logit 0: A[t, s] = 1/(t+1), so alpha_1 = H_T / T."""
    model = tiny_gpt()  # gated: the gate scales outputs, not the attention pattern
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:16].zero_()
    T = 16
    batches = [torch.randint(0, 11, (2, T)), torch.randint(0, 11, (3, T))]
    expected = sum(1 / (t + 1) for t in range(T)) / T  # 0.211
    stats = analyze.model_stats(model, batches, eps=0.3, layer=1)
    assert np.allclose(stats["per_layer"]["first_token_attn"], expected)
    assert stats["f_attn"] == pytest.approx(expected)
    assert stats["sink_1"] == 0.0
    assert analyze.model_stats(model, batches, eps=0.2)["sink_1"] == 100.0
    assert stats["max_attn_logit"] == 0.0
    attn_map = np.array(stats["attn_map"]["per_head"])  # running average over the 5 sequences
    assert attn_map.shape == (2, T, T)
    assert np.allclose(attn_map, np.tril(1 / np.arange(1, T + 1)[:, None] * np.ones((T, T))))
    assert 0 < stats["mean_gate"] < 1


def test_model_stats_leaves_the_model_mode_and_random_state_alone():
    model = tiny_gpt(dropout=0.1).train()
    idx = torch.randint(0, 11, (2, 8))
    state = torch.get_rng_state()
    analyze.model_stats(model, [idx])
    assert model.training and torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------
# Activations, gates and outputs on hand-built tensors
# ---------------------------------------------------------------------------


def test_a_planted_massive_activation_is_found_at_its_layer_position_and_channel():
    stats = analyze.Stats()
    torch.manual_seed(0)
    for batch in range(2):
        for layer in range(3):
            hidden = torch.randn(4, 10, 8)
            if batch == 1 and layer == 1:
                hidden[2, 6, 5] = -300.0
            stats(layer, "hidden", hidden)
    summary = stats.summary()
    per_layer = summary["per_layer"]
    assert int(np.argmax(per_layer["m_act"])) == 1 and per_layer["m_act"][1] == 300.0
    assert (per_layer["m_act_position"][1], per_layer["m_act_channel"][1]) == (6, 5)
    assert per_layer["median_abs"][1] == pytest.approx(0.674, abs=0.1)  # median of |N(0, 1)|
    assert summary["m_act_ratio"] == pytest.approx(300.0 / per_layer["median_abs"][1])
    assert summary["m_act"] == pytest.approx(np.mean(per_layer["m_act"]))
    assert summary["f_attn"] is None  # nothing else was observed


def test_gate_statistics_on_hand_built_scores():
    gate = torch.full((2, 5, 2, 4), 0.5)  # (B, T, H, D)
    gate[:, 0] = 0.05  # the first token nearly shut: 16 scores
    gate[:, 1:, 1, :2] = 0.005  # two channels of head 1 shut: 16 scores
    stats = analyze.Stats()
    stats(0, "gate", gate)
    summary = stats.summary()
    assert summary["gate_below_0.1"] == pytest.approx(32 / 80)
    assert summary["gate_below_0.01"] == pytest.approx(16 / 80)
    assert summary["mean_gate"] == pytest.approx((16 * 0.05 + 16 * 0.005 + 48 * 0.5) / 80)
    assert summary["gate_first_token"] == pytest.approx(0.05)
    assert summary["gate_other_tokens"] == pytest.approx((16 * 0.005 + 48 * 0.5) / 64)
    assert summary["per_layer"]["gate_per_head"][0] == pytest.approx([(8 * 0.05 + 32 * 0.5) / 40,
                                                                      (8 * 0.05 + 16 * 0.005 + 16 * 0.5) / 40])
    assert sum(summary["gate_hist"]) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(2, 5, 1, 1), (2, 5, 1, 4), (2, 5, 16)])  # head-shared, G5 output gate
def test_gates_without_heads_count_as_one(shape):
    stats = analyze.Stats()
    stats(0, "gate", torch.full(shape, 0.25))
    summary = stats.summary()
    assert summary["mean_gate"] == pytest.approx(0.25) and summary["per_layer"]["gate_per_head"] == [[0.25]]


def test_attention_output_sparsity():
    stats = analyze.Stats()
    stats(0, "attn_output", torch.tensor([0.0, -5e-4, 5e-3, 1.0]).repeat(2, 3, 4))
    summary = stats.summary()
    assert summary["attn_output_below_1e-2"] == pytest.approx(0.75)
    assert summary["attn_output_below_1e-3"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------
# Spike score
# ---------------------------------------------------------------------------


def test_spike_score_on_synthetic_series():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=1000)
    assert analyze.spike_score(noise, window=100) == 0.0
    assert analyze.spike_score(3.0 * np.exp(-np.arange(1000) / 300) + 0.01 * noise) == 0.0  # a falling loss
    spiky = noise.copy()
    spiky[500] = 20.0  # 20 sigma; steps 100..999 can be judged
    assert analyze.spike_score(spiky, window=100) == pytest.approx(100 / 900)
    assert analyze.spike_score(list(spiky), window=100, threshold=25.0) == 0.0
    # Non-finite values are dropped, not counted.
    with_nan = np.insert(spiky, 300, [np.nan, np.inf])
    assert analyze.spike_score(with_nan, window=100) == pytest.approx(100 / 900)
    # Too short to judge, or windows with no spread: nothing can be judged.
    assert analyze.spike_score(noise[:100], window=100) == 0.0
    assert analyze.spike_score([1.0] * 200 + [5.0], window=100) == 0.0
    with pytest.raises(ValueError, match="window >= 1"):
        analyze.spike_score(noise, window=0)


# ---------------------------------------------------------------------------
# Checkpoints, the command line and training-time logging
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(data_dir):
    """A gated and an ungated model trained briefly on the small dataset, in its folder."""
    out = {}
    for gate in ("elementwise", "none"):
        out[gate] = data_dir / gate
        train.main([f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={out[gate]}", f"--gate={gate}",
                    "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
                    "--learning_rate=3e-3", "--warmup_iters=2", "--max_iters=10", "--eval_interval=5",
                    "--eval_iters=2", "--spike_window=5", "--progress=false", "--device=cpu"])
    return out


def test_train_logs_sink_activation_gate_and_spike_numbers(runs):
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
    stats = analyze.model_stats(train.model_from_checkpoint(ckpt), [probe])
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
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # as if matplotlib were not installed
    assert analyze.plot_figures(results, tmp_path / "no_figures", layer=1) == []
    assert "figures skipped: pip install matplotlib" in capsys.readouterr().out
    assert not (tmp_path / "no_figures").exists()


@pytest.mark.parametrize("variant, heads", [
    (dict(gate="headwise"), 2),
    (dict(gate="elementwise", gate_heads="shared"), 1),
    (dict(gate="elementwise", gate_position="output"), 1),
    (dict(gate="elementwise", gate_position="value", pos_emb="rope"), 2),
    (dict(gate="elementwise", gate_mode="additive", gate_activation="silu"), 2),
])
def test_every_gate_variant_is_measured(variant, heads):
    stats = analyze.model_stats(tiny_gpt(**variant), [torch.randint(0, 11, (2, 16))])
    assert [len(h) for h in stats["per_layer"]["gate_per_head"]] == [heads, heads]
    assert stats["mean_gate"] == pytest.approx(np.mean(stats["per_layer"]["mean_gate"]))
    assert all(isinstance(stats[key], float) for key in ("f_attn", "sink_1", "m_act", "max_attn_logit"))
