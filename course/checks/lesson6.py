"""Lesson 6: RoPE scaling rules."""

import math

import torch

from course.checks import Exercise, Wrong, as_tensor, expect_shape
from model import GPTConfig, rope_frequencies

CASES = [(32, 10000.0, 4.0, 64), (64, 10000.0, 8.0, 256), (16, 500.0, 2.0, 128)]  # (D, base, s, L)


def _theta(D, base):
    return torch.tensor([base ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float64)


def _correction_index(D, base, L, turns):
    """The pair index that turns `turns` times within L tokens: L theta_i / (2 pi) = turns, solved for i."""
    return D * math.log(L / (turns * 2 * math.pi)) / (2 * math.log(base))


def _keep(D, base, L):
    """YaRN's share of each pair's own frequency, as the reference code (jquesnelle/yarn, transformers) has it."""
    low = max(math.floor(_correction_index(D, base, L, 32)), 0)
    high = min(math.ceil(_correction_index(D, base, L, 1)), D - 1)
    if low == high:
        high += 0.001
    return torch.tensor([1 - min(1.0, max(0.0, (i - low) / (high - low))) for i in range(D // 2)],
                        dtype=torch.float64)


def _mix(theta, s, keep):
    return theta / s * (1 - keep) + theta * keep


def _literal_gamma(D, base, L):
    """The paper's gamma(r) read literally, linear in the turns r_i rather than in the index: a common slip."""
    r = L * _theta(D, base) / (2 * math.pi)
    return ((r - 1) / 31).clamp(0, 1)


def _expected(D, base, s, L, method):
    theta = _theta(D, base)
    if method == "pi":
        return theta / s
    if method == "ntk":
        return _theta(D, base * s ** (D / (D - 2)))
    if method == "yarn":
        return _mix(theta, s, _keep(D, base, L))
    return theta


HINTS = {
    "none": "plain RoPE: theta_i = base^(-2i/D) for i = 0 .. D/2-1 (the exponent is 2i/D, not i/D)",
    "pi": "position interpolation divides every frequency by s",
    "ntk": "NTK-aware scaling keeps the formula and changes the base to base * s^(D/(D-2)): "
           "the fastest pair (i = 0) keeps its frequency and the slowest is divided by exactly s",
    "yarn": "YaRN as everyone runs it: the pair that turns n times in L tokens is "
            "i(n) = D ln(L / (2 pi n)) / (2 ln base); low = max(floor(i(32)), 0), high = min(ceil(i(1)), D - 1); "
            "keep_i = 1 - clamp((i - low) / (high - low), 0, 1) over the pair index i; "
            "theta_i' = theta_i / s (1 - keep_i) + theta_i keep_i",
}


def check_rope_scaling(module):
    for method in ("none", "pi", "ntk", "yarn"):
        for D, base, s, L in CASES:
            got = as_tensor(module.scaled_frequencies(D, base, s, method, L), "scaled_frequencies' result")
            expect_shape(got, (D // 2,), f"the frequencies for head size {D}")
            want = _expected(D, base, s, L, method)
            if not torch.allclose(got.double(), want, rtol=1e-6, atol=0):
                worst = int((got.double() - want).abs().argmax())
                hint = HINTS[method]
                theta = _theta(D, base)
                if method == "yarn" and torch.allclose(got.double(), _mix(theta, s, _literal_gamma(D, base, L)),
                                                       rtol=1e-6, atol=0):
                    hint = ("that is the paper's gamma(r) read literally, a ramp linear in the turns r_i; the "
                            "authors' code and every library round the 32- and 1-turn bounds to pair indices "
                            "and ramp linearly in the index. " + hint)
                raise Wrong(f"method {method!r}, D={D}, base={base:g}, s={s:g}, L={L}: pair {worst} should have "
                            f"frequency {want[worst].item():.6g}, you have {got[worst].item():.6g}. {hint}")
    for method in ("pi", "ntk", "yarn"):
        got = module.scaled_frequencies(32, 10000.0, 1.0, method, 64)
        if not torch.allclose(got.double(), _theta(32, 10000.0), rtol=1e-12):
            raise Wrong(f"with s = 1 every method should be plain RoPE; {method!r} is not")
    _compare_with_model(module)
    return ("PI, NTK-aware and YaRN frequencies match the reference formulas for three (D, base, s, L) "
            "and model.rope_frequencies")


def _compare_with_model(module):
    """The same frequencies as the ones model.py rotates q and k by (float32 there, hence the tolerance)."""
    for D, base, s, L in CASES:
        for method in ("none", "pi", "ntk", "yarn"):
            config = GPTConfig(vocab_size=8, block_size=L, n_head=2, n_embd=2 * D, pos_emb="rope", rope_base=base,
                               rope_scaling=method, rope_factor=1.0 if method == "none" else s)
            want = rope_frequencies(config, L).double()
            got = module.scaled_frequencies(D, base, s, method, L).double()
            if not torch.allclose(got, want, rtol=1e-5, atol=0):
                raise Wrong(f"method {method!r}, D={D}, s={s:g}, L={L}: your frequencies differ from "
                            "model.rope_frequencies, the ones the model uses")


EXERCISES = [Exercise("6.1", "l6_rope_scaling.py", "RoPE scaling rules", check_rope_scaling)]
