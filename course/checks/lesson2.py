"""Lesson 2: the gate in the attention forward, and its parameter cost."""

import math

import torch
import torch.nn.functional as F

import model
from course.checks import VOCAB, Exercise, Wrong, as_tensor, expect_number, expect_shape, same, tiny_model
from model import GPT, GPTConfig

# ---------------------------------------------------------------------------
# 2.1 The gate in the attention forward
# ---------------------------------------------------------------------------


def _attention(x, w_attn, w_proj, n_head, gate, position="sdpa", activation=torch.sigmoid, scale="D",
               headwise="broadcast"):
    """Gated attention with the mistakes a student can make as options (for the diagnosis).

    position: where the gate acts: "sdpa" (G1, right), "value" (G2), "output" (G5), "logits" (on the
        queries, which scales the attention logits before the softmax), None (no gate).
    scale: what the logits are divided by the square root of: "D" (head size, right), "C" (model width), None.
    headwise: how a headwise gate's H scores reach the C channels: "broadcast" (each head's D channels
        share its score, right) or "tile" (the H scores repeated along the channels, so channel c gets
        score c mod H: scores.repeat(1, 1, D) instead of repeat_interleave).
    """
    B, T, C = x.shape
    D = C // n_head
    q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
    scores = activation(g)
    if gate == "headwise" and headwise == "tile":
        per_head = scores.repeat(1, 1, D).view(B, T, n_head, D)
    else:
        per_head = scores.view(B, T, n_head, D if gate == "elementwise" else 1)
    if position == "value":
        v = (v.view(B, T, n_head, D) * per_head).reshape(B, T, C)
    if position == "logits":
        q = (q.view(B, T, n_head, D) * per_head).reshape(B, T, C)
    q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in (q, k, v))
    divide = {"D": None, "C": 1 / math.sqrt(C), None: 1.0}[scale]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=divide).transpose(1, 2)
    if position == "sdpa":
        y = y * per_head
    out = y.reshape(B, T, C) @ w_proj.T
    return out * scores if position == "output" else out


MISTAKES = [  # (options of _attention, what the student did)
    (dict(position=None), "your output is attention without the gate: multiply each head's output by "
                          "sigmoid(G) before the output projection"),
    (dict(position="value"), "you gated the values before attention (the paper's G2); G1 gates the "
                             "output of SDPA, after the softmax has mixed the values"),
    (dict(position="output"), "you gated after the output projection (the paper's G5); G1 gates each "
                              "head's output before W_proj"),
    (dict(position="logits"), "you gated the attention logits (the scores Q K^T, or the queries) before the "
                              "softmax; G1 multiplies the output of attention, softmax(Q K^T / sqrt(D)) V, "
                              "by sigmoid(G), after the softmax has mixed the values"),
    (dict(activation=lambda g: g), "the gate is applied without the sigmoid: the scores are sigmoid(G)"),
    (dict(activation=F.silu), "the gate uses SiLU; the paper's gate (and this exercise) uses sigmoid"),
    (dict(scale=None), "attention logits are not scaled: divide Q K^T by sqrt(head size)"),
    (dict(scale="C"), "you divided Q K^T by sqrt(C), the model width; divide by sqrt(D), the head size "
                      "D = C // n_head (each head's logits are dot products of D channels; "
                      "scaled_dot_product_attention does this by default)"),
    (dict(headwise="tile"), "the heads get the wrong scores: head h's D channels must all share score h, but "
                            "channel c of yours gets score c mod H, as the H scores repeated along the channels "
                            "give (scores.repeat(1, 1, D), tile, or a (B, T, 1, H) view). View the scores as "
                            "(B, T, H, 1), so that they broadcast over y of shape (B, T, H, D) (or use "
                            "repeat_interleave(D, dim=-1))"),
]


def _layer(gate, seed):
    """Weights of a model.py attention layer, with gate columns large enough that the gate matters."""
    config = GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=4, n_embd=16, gate=gate)
    torch.manual_seed(seed)
    attn = model.CausalSelfAttention(config, 0).double().eval()
    with torch.no_grad():
        attn.c_attn.weight.normal_(0, 0.4)
        attn.c_proj.weight.normal_(0, 0.4)
    return attn


def _check_layer(gated_attention, gate):
    attn = _layer(gate, seed=1)
    x = torch.randn(2, 8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w_attn, w_proj = attn.c_attn.weight.detach(), attn.c_proj.weight.detach()
    with torch.no_grad():
        out = as_tensor(gated_attention(x.clone(), w_attn, w_proj, 4, gate), "gated_attention's result")
        expect_shape(out, x.shape, f"the output ({gate} gate, B=2, T=8, C=16)")
        later = x.clone()
        later[:, 5:] += 1.0
        if not same(gated_attention(later, w_attn, w_proj, 4, gate)[:, :5], out[:, :5]):
            raise Wrong("causality broken: changing tokens 5-7 changed the output at tokens 0-4. Each query may "
                        "only attend to itself and earlier tokens (is_causal=True, or mask the upper triangle)")
        expected = attn(x)
        if same(out, expected):
            return
        for options, explanation in MISTAKES:
            if gate == "headwise" and options.get("position") == "output":
                continue  # a headwise gate has H columns, which cannot scale the output's C channels
            if gate == "elementwise" and "headwise" in options:
                continue
            if same(out, _attention(x, w_attn, w_proj, 4, gate, **options)):
                raise Wrong(f"({gate} gate) {explanation}")
    raise Wrong(f"({gate} gate) your output differs from model.py's attention by up to "
                f"{(out - expected).abs().max().item():.3g}; check the split of w_attn's columns "
                "(q, k, v, then the gate) and that head h uses columns h*D .. h*D+D-1 of each")


def _in_the_model(gated_attention):
    """Your function as the attention of a GPT: same logits and gradients as model.py's."""
    def forward(self, x, rope=None, cache=None, observe=None):
        return gated_attention(x, self.c_attn.weight, self.c_proj.weight, self.n_head, self.config.gate)

    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(4))
    results = []
    for patched in (False, True):
        gpt = tiny_model(seed=5, gate="elementwise")
        original = model.CausalSelfAttention.forward
        if patched:
            model.CausalSelfAttention.forward = forward
        try:
            logits, loss = gpt(idx, idx)
            loss.backward()
        finally:
            model.CausalSelfAttention.forward = original
        results.append((logits.detach(), gpt.transformer.h[0].attn.c_attn.weight.grad))
    (ref_logits, ref_grad), (logits, grad) = results
    if not same(logits, ref_logits):
        raise Wrong("inside a GPT, your attention gives other logits than model.py's")
    if grad is None or not grad[3 * 32:].abs().sum() > 0:
        raise Wrong("no gradient reaches the gate's weights W_g: compute the scores from x @ w_attn.T "
                    "without .detach() or .data, so that training can move the gate")
    if not same(grad, ref_grad, atol=1e-8):
        raise Wrong("inside a GPT, the gradients reaching c_attn differ from model.py's")


def check_gate(module):
    for gate in ("elementwise", "headwise"):
        _check_layer(module.gated_attention, gate)
    _in_the_model(module.gated_attention)
    return "elementwise and headwise G1 gates match model.py, causally; in a GPT, same logits and gradients"


# ---------------------------------------------------------------------------
# 2.2 The gate's parameters
# ---------------------------------------------------------------------------

PARAMETER_CASES = [
    dict(gate="elementwise"),
    dict(gate="headwise"),
    dict(gate="none"),
    dict(gate="elementwise", n_layer=3),
    dict(gate="elementwise", gate_heads="shared"),
    dict(gate="headwise", gate_heads="shared"),
    dict(gate="elementwise", gate_position="value"),
    dict(gate="elementwise", gate_position="output"),
    dict(gate="headwise", gate_input="independent"),
    dict(gate="elementwise", gate_input="independent"),
    dict(gate="elementwise", bias=True),
    dict(gate="headwise", bias=True),
]


def check_gate_parameters(module):
    base = dict(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=4, n_embd=32)
    plain = {}
    for case in PARAMETER_CASES:
        config = GPTConfig(**{**base, **case})
        key = (config.n_layer, config.bias)
        if key not in plain:
            plain[key] = GPT(GPTConfig(**{**base, "gate": "none", "n_layer": config.n_layer,
                                            "bias": config.bias})).num_params()
        expected = GPT(config).num_params() - plain[key]
        got = expect_number(module.gate_parameters(config), "gate_parameters")
        if got != expected:
            described = ", ".join(f"{k}={v}" for k, v in case.items())
            hint = ""
            if got == expected / config.n_layer:
                hint = " (that is one layer's count: every layer has its own gate)"
            elif "bias" in case and got == expected - config.n_layer * math.prod(config.gate_shape):
                hint = " (with bias=True the gate's columns of c_attn have biases too)"
            elif case.get("gate_input") == "independent":
                hint = " (an input-independent gate has no matrix: one learned logit per score)"
            raise Wrong(f"for {described} (n_layer={config.n_layer}, n_head=4, n_embd=32) the gate adds "
                        f"{expected:,} parameters; you said {got:,.0f}{hint}")
    return f"all {len(PARAMETER_CASES)} variants counted right"


EXERCISES = [
    Exercise("2.1", "l2_gate.py", "the gate in the attention forward", check_gate),
    Exercise("2.2", "l2_gate_parameters.py", "the gate's parameters", check_gate_parameters),
]
