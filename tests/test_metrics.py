import math

import numpy as np
import pytest
import torch

import train
from lab import metrics
from lab.metrics import instrumented
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
    stats = metrics.model_stats(model, [torch.randint(0, 11, (3, 16)) for _ in range(2)])
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
    stats = metrics.model_stats(model, batches, eps=0.3, layer=1)
    assert np.allclose(stats["per_layer"]["first_token_attn"], expected)
    assert stats["f_attn"] == pytest.approx(expected)
    assert stats["sink_1"] == 0.0
    assert metrics.model_stats(model, batches, eps=0.2)["sink_1"] == 100.0
    assert stats["max_attn_logit"] == 0.0
    attn_map = np.array(stats["attn_map"]["per_head"])  # running average over the 5 sequences
    assert attn_map.shape == (2, T, T)
    assert np.allclose(attn_map, np.tril(1 / np.arange(1, T + 1)[:, None] * np.ones((T, T))))
    assert 0 < stats["mean_gate"] < 1


def test_model_stats_leaves_the_model_mode_and_random_state_alone():
    model = tiny_gpt(dropout=0.1).train()
    idx = torch.randint(0, 11, (2, 8))
    state = torch.get_rng_state()
    metrics.model_stats(model, [idx])
    assert model.training and torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------
# Activations, gates and outputs on hand-built tensors
# ---------------------------------------------------------------------------


def test_a_planted_massive_activation_is_found_at_its_layer_position_and_channel():
    stats = metrics.Stats()
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
    stats = metrics.Stats()
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
    stats = metrics.Stats()
    stats(0, "gate", torch.full(shape, 0.25))
    summary = stats.summary()
    assert summary["mean_gate"] == pytest.approx(0.25) and summary["per_layer"]["gate_per_head"] == [[0.25]]


def test_attention_output_sparsity():
    stats = metrics.Stats()
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
    assert metrics.spike_score(noise, window=100) == 0.0
    assert metrics.spike_score(3.0 * np.exp(-np.arange(1000) / 300) + 0.01 * noise) == 0.0  # a falling loss
    spiky = noise.copy()
    spiky[500] = 20.0  # 20 sigma; steps 100..999 can be judged
    assert metrics.spike_score(spiky, window=100) == pytest.approx(100 / 900)
    assert metrics.spike_score(list(spiky), window=100, threshold=25.0) == 0.0
    # Non-finite values are dropped, not counted.
    with_nan = np.insert(spiky, 300, [np.nan, np.inf])
    assert metrics.spike_score(with_nan, window=100) == pytest.approx(100 / 900)
    # Too short to judge, or windows with no spread: nothing can be judged.
    assert metrics.spike_score(noise[:100], window=100) == 0.0
    assert metrics.spike_score([1.0] * 200 + [5.0], window=100) == 0.0
    with pytest.raises(ValueError, match="window >= 1"):
        metrics.spike_score(noise, window=0)




@pytest.mark.parametrize("variant, heads", [
    (dict(gate="headwise"), 2),
    (dict(gate="elementwise", gate_heads="shared"), 1),
    (dict(gate="elementwise", gate_position="output"), 1),
    (dict(gate="elementwise", gate_position="value", pos_emb="rope"), 2),
    (dict(gate="elementwise", gate_mode="additive", gate_activation="silu"), 2),
])
def test_every_gate_variant_is_measured(variant, heads):
    stats = metrics.model_stats(tiny_gpt(**variant), [torch.randint(0, 11, (2, 16))])
    assert [len(h) for h in stats["per_layer"]["gate_per_head"]] == [heads, heads]
    assert stats["mean_gate"] == pytest.approx(np.mean(stats["per_layer"]["mean_gate"]))
    assert all(isinstance(stats[key], float) for key in ("f_attn", "sink_1", "m_act", "max_attn_logit"))


# ---------------------------------------------------------------------------
# Query classes, value-state drain and residual-state peak on hand-built tensors
# ---------------------------------------------------------------------------

BOS, TRIGGER = 9, 3


def test_bos_attention_and_gate_are_split_by_query_class():
    # Queries: BOS (own class, left out), active at the trigger 3, dormant elsewhere.
    idx = torch.tensor([[BOS, 3, 4, 3, 5], [BOS, 4, 4, 5, 3]])
    on_bos = torch.tensor([[1.0, 0.1, 0.8, 0.2, 0.9], [1.0, 0.7, 0.6, 0.5, 0.0]])
    probs = torch.zeros(2, 1, 5, 5)
    for b in range(2):
        for t in range(5):
            probs[b, 0, t, 0] = on_bos[b, t]
            probs[b, 0, t, t] += 1 - on_bos[b, t]
    gate = torch.tensor([[0.5, 0.9, 0.1, 0.8, 0.2], [0.5, 0.3, 0.1, 0.2, 1.0]])[:, :, None, None].repeat(1, 1, 1, 4)
    stats = metrics.Stats(bos_token=BOS, trigger_tokens=[TRIGGER])
    stats.tokens(idx)
    stats(0, "attn_probs", probs)
    stats(0, "gate", gate)
    per_layer = stats.summary()["per_layer"]
    assert per_layer["bos_attn_dormant"][0] == pytest.approx([(0.8 + 0.9 + 0.7 + 0.6 + 0.5) / 5])
    assert per_layer["bos_attn_active"][0] == pytest.approx([(0.1 + 0.2 + 0.0) / 3])
    assert per_layer["gate_dormant"][0] == pytest.approx([(0.1 + 0.2 + 0.3 + 0.1 + 0.2) / 5])
    assert per_layer["gate_active"][0] == pytest.approx([(0.9 + 0.8 + 1.0) / 3])


def test_bos_attention_counts_every_bos_key_of_a_window():
    idx = torch.tensor([[4, BOS, 3, 5]])  # a window that starts mid-document
    probs = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.1, 0.6, 0.3, 0], [0.2, 0.3, 0.1, 0.4]])[None, None]
    stats = metrics.Stats(bos_token=BOS, trigger_tokens=[TRIGGER])
    stats.tokens(idx)
    stats(0, "attn_probs", probs)
    per_layer = stats.summary()["per_layer"]
    assert per_layer["bos_attn_dormant"][0] == pytest.approx([(0.0 + 0.3) / 2])  # queries 0 and 3
    assert per_layer["bos_attn_active"][0] == pytest.approx([0.6])


def test_value_and_residual_norms_at_bos_against_the_rest():
    idx = torch.tensor([[BOS, 4, 5], [BOS, 6, 7]])
    values = torch.ones(2, 3, 2, 4)  # (B, T, H, D): |v| = 2 everywhere ...
    values[:, 0, 0] = 0.05  # ... but 0.1 for head 0 at BOS: a value-state drain
    hidden = torch.zeros(2, 3, 8)
    hidden[:, 0, 2] = 30.0  # a residual-state peak at BOS
    hidden[:, 1:, 0] = 3.0
    stats = metrics.Stats(bos_token=BOS)
    stats.tokens(idx)
    stats(0, "values", values)
    stats(0, "hidden", hidden)
    per_layer = stats.summary()["per_layer"]
    assert per_layer["value_norm_bos"][0] == pytest.approx([0.1, 2.0])
    assert per_layer["value_norm_other"][0] == pytest.approx([2.0, 2.0])
    assert per_layer["resid_norm_bos"] == pytest.approx([30.0]) and per_layer["resid_norm_other"] == [3.0]
    assert per_layer["bos_attn_dormant"] is None  # no trigger tokens, no query classes


def test_stats_with_a_bos_token_need_the_token_ids():
    stats = metrics.Stats(bos_token=BOS)
    with pytest.raises(ValueError, match="call stats.tokens"):
        stats(0, "hidden", torch.ones(1, 3, 4))
    with pytest.raises(ValueError, match="pass bos_token with trigger_tokens"):
        metrics.Stats(trigger_tokens=[3])


def test_model_stats_of_a_real_model_split_by_class():
    model = tiny_gpt(pos_emb="rope")
    bos = 10  # the last of the 11 tokens
    idx = torch.randint(0, bos, (4, 16))
    idx[:, 0] = bos
    stats = metrics.model_stats(model, [idx], bos_token=bos, trigger_tokens=[TRIGGER])
    per_layer = stats["per_layer"]
    assert all(0 <= v <= 1 for heads in per_layer["bos_attn_dormant"] for v in heads)
    assert len(per_layer["value_norm_bos"]) == 2 and len(per_layer["value_norm_bos"][0]) == 2
    f_attn = np.array(stats["per_layer"]["first_token_attn"])
    classes = [(idx == TRIGGER).sum().item(), ((idx != TRIGGER) & (idx != bos)).sum().item()]
    # Query 0 puts all its attention on BOS; the classes split the other queries.
    both = (np.array(per_layer["bos_attn_active"]) * classes[0] + np.array(per_layer["bos_attn_dormant"])
            * classes[1] + 4) / idx.numel()
    assert both == pytest.approx(f_attn)


# ---------------------------------------------------------------------------
# Functional tests: masking key 0, forcing the gates open
# ---------------------------------------------------------------------------


def batch(seed=0, B=3, T=16):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 11, (B, T), generator=generator), torch.randint(0, 11, (B, T), generator=generator))]


def test_masking_key_0_renormalises_attention_over_the_other_keys():
    model = tiny_gpt()
    x = batch()[0][0]
    seen = {}

    def observe(layer, name, t):
        if name == "attn_probs":
            seen.setdefault((layer, name), t)

    with torch.no_grad():
        with instrumented(model, observe=observe, mask_first_key=True):
            model(x)
        with instrumented(model, mask_first_key=True):
            fast, _ = model(x)  # the flash-attention path, with the same mask
    probs = seen[(0, "attn_probs")]
    assert (probs[:, :, 0, 0] == 1).all()  # token 0 has only itself
    assert (probs[:, :, 1:, 0] == 0).all() and torch.allclose(probs.sum(-1), torch.ones(3, 2, 16))
    with torch.no_grad():
        slow, _ = model(x)
        with instrumented(model, mask_first_key=True, observe=lambda *a: None):
            explicit, _ = model(x)
    assert torch.allclose(fast, explicit, atol=1e-5) and not torch.allclose(fast, slow, atol=1e-3)
    # Switched off on leaving, also after an exception: no method replaced, no hook left.
    with pytest.raises(RuntimeError, match="inside"):
        with instrumented(model, observe=lambda *a: None, mask_first_key=True, open_gates=True):
            raise RuntimeError("inside")
    for block in model.transformer.h:
        assert "attend" not in vars(block.attn) and "gate_scores" not in vars(block.attn)
        assert not block._forward_hooks and not block.attn.c_proj._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(x)[0], slow)


def test_a_model_whose_attention_adds_nothing_does_not_depend_on_key_0():
    model = tiny_gpt(gate="none")
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight.zero_()
    changes = metrics.functional_tests(model, batch())
    assert changes["loss_first_key_masked_change"] == 0.0 and changes["loss_gates_open_change"] is None


def test_a_gated_model_with_its_gates_forced_open_is_the_plain_model_with_its_weights():
    gated, plain = tiny_gpt(gate="elementwise"), tiny_gpt(gate="none")
    state = gated.state_dict()
    for key in [k for k in state if k.endswith("c_attn.weight")]:
        state[key] = state[key][:3 * 16]  # drop the gate's columns
    plain.load_state_dict(state)
    batches = batch(1)
    runtime = train.Runtime(torch.device("cpu"), torch.float32)
    with instrumented(gated, open_gates=True):
        open_loss = train.mean_loss(gated, batches, runtime)
    assert open_loss == pytest.approx(train.mean_loss(plain, batches, runtime), abs=1e-6)
    changes = metrics.functional_tests(gated, batches)
    assert changes["loss_gates_open_change"] == pytest.approx(open_loss - train.mean_loss(gated, batches, runtime))
    assert changes["loss_gates_open_change"] != 0.0
    additive = tiny_gpt(gate="elementwise", gate_mode="additive", gate_activation="silu")
    assert metrics.functional_tests(additive, batches)["loss_gates_open_change"] is None
    with pytest.raises(ValueError, match="open_gates needs a multiplicative gate"):
        with instrumented(additive, open_gates=True):
            pass
