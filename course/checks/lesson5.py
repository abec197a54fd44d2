"""Lesson 5: F-Attn and Sink_1, M-Act."""

import math

import torch

from lab import metrics
from course.checks import VOCAB, Exercise, Wrong, expect_number, tiny_model


def _observed(name, seed=0):
    """One layer-by-layer list of what a real tiny GPT hands its observer under `name`, and metrics.py's summary."""
    gpt = tiny_model(seed=seed)
    idx = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(seed))
    seen = []
    stats = metrics.Stats()

    def observer(layer, what, tensor):
        stats(layer, what, tensor)
        if what == name:
            seen.append(tensor.detach().clone())

    with torch.no_grad(), metrics.instrumented(gpt, observe=observer):
        gpt(idx)
    return seen, stats.summary()


def _pair(result, what):
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise Wrong(f"{what} should return a pair of numbers")
    return expect_number(result[0], what), expect_number(result[1], what)


# ---------------------------------------------------------------------------
# 5.1 F-Attn and Sink_1
# ---------------------------------------------------------------------------


def _sink_maps():
    """Two layers of 2 heads, T = 4: layer 0 head 0 is a sink (every query on token 0); the rest
    attend to themselves only, so token 0 gets attention from query 0 alone (alpha_1 = 1/4)."""
    T = 4
    local = torch.eye(T)
    sink = torch.zeros(T, T)
    sink[:, 0] = 1.0
    layer0 = torch.stack([sink, local]).unsqueeze(0).repeat(2, 1, 1, 1)  # (B=2, H=2, T, T)
    layer1 = torch.stack([local, local]).unsqueeze(0).repeat(2, 1, 1, 1)
    return [layer0, layer1]


def check_first_token(module):
    maps = _sink_maps()
    f_attn, sink_1 = _pair(module.first_token_attention([m.clone() for m in maps], 0.3), "first_token_attention")
    expected_f = (1 + 3 * 0.25) / 4
    if math.isclose(f_attn, 1.0) or math.isclose(f_attn, 0.25):
        raise Wrong(f"F-Attn came out as {f_attn:g}: you took the attention *of* query 0 (row 0, which can only see "
                    "itself). F-Attn is the attention *on* token 0: column 0, probs[..., 0], averaged over queries")
    if math.isclose(sink_1, 0.25):
        raise Wrong("Sink_1 came out as 0.25: it is a percentage (25 here), not a fraction")
    if not math.isclose(f_attn, expected_f, rel_tol=1e-6):
        raise Wrong(f"on a hand-made map (of four heads, one puts all attention on token 0, the others "
                    f"each token on itself) F-Attn is {expected_f:.4f}; you got {f_attn:.4f}")
    if not math.isclose(sink_1, 25.0):
        raise Wrong(f"on the same map one (layer, head) pair of four is a sink: Sink_1 = 25%; you got {sink_1:g}")
    probs, summary = _observed("attn_probs")
    f_attn, sink_1 = _pair(module.first_token_attention(probs, 0.3), "first_token_attention")
    if not math.isclose(f_attn, summary["f_attn"], rel_tol=1e-6):
        raise Wrong(f"on a real GPT's attention, F-Attn is {summary['f_attn']:.4f} (metrics.py); you got {f_attn:.4f}")
    if not math.isclose(sink_1, summary["sink_1"], abs_tol=1e-9):
        raise Wrong(f"on a real GPT's attention, Sink_1 is {summary['sink_1']:g} (metrics.py); you got {sink_1:g}")
    return "same F-Attn and Sink_1 as metrics.py, on hand-made maps and on a GPT's attention"


# ---------------------------------------------------------------------------
# 5.2 M-Act
# ---------------------------------------------------------------------------


def check_massive_activations(module):
    h0 = torch.ones(1, 4, 8)
    h0[0, 2, 5] = -50.0  # a massive activation, negative
    h1 = torch.full((1, 4, 8), 2.0)
    h1[0, 0, 0] = 10.0
    m_act, ratio = _pair(module.massive_activations([h0.clone(), h1.clone()]), "massive_activations")
    if math.isclose(m_act, (1.0 + 10.0) / 2):
        raise Wrong("M-Act ignored a large negative activation (-50): take the max of |h|, not of h")
    if math.isclose(m_act, 50.0):
        raise Wrong("M-Act came out as the largest over layers (50): it is the mean over layers of each layer's max")
    if not math.isclose(m_act, 30.0):
        raise Wrong(f"two layers with max |h| of 50 and 10: M-Act is their mean, 30; you got {m_act:g}")
    if math.isclose(ratio, (50 + 5) / 2):
        raise Wrong("the ratio is the largest over layers of max/median, not their mean")
    if not math.isclose(ratio, 50.0):
        raise Wrong(f"layer 0 has max |h| 50 and median |h| 1: the ratio is 50; you got {ratio:g}")
    hidden, summary = _observed("hidden", seed=1)
    m_act, ratio = _pair(module.massive_activations(hidden), "massive_activations")
    if not math.isclose(m_act, summary["m_act"], rel_tol=1e-6):
        raise Wrong(f"on a real GPT's residual stream M-Act is {summary['m_act']:.4f} (metrics.py); you got {m_act:.4f}")
    if not math.isclose(ratio, summary["m_act_ratio"], rel_tol=1e-6):
        raise Wrong(f"on a real GPT's residual stream the max/median ratio is {summary['m_act_ratio']:.3f} "
                    f"(metrics.py); you got {ratio:.3f}")
    return "same M-Act and max/median ratio as metrics.py, on hand-made states and on a GPT"


EXERCISES = [
    Exercise("5.1", "l5_first_token.py", "F-Attn and Sink_1", check_first_token),
    Exercise("5.2", "l5_massive_activations.py", "M-Act", check_massive_activations),
]
