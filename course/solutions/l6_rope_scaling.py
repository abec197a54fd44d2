"""Exercise 6.1, reference solution: RoPE frequencies under PI, NTK-aware and YaRN scaling."""

import math

import torch


def scaled_frequencies(head_size, base, scale, method, trained_length):
    exponents = torch.arange(0, head_size, 2, dtype=torch.float64) / head_size  # 2i / D
    if method == "ntk":
        base = base * scale ** (head_size / (head_size - 2))
    theta = base ** -exponents
    if method == "pi":
        return theta / scale
    if method == "yarn":
        # The pair that turns n times within L tokens, L theta_i / (2 pi) = n solved for i (Peng et al. 2023,
        # as their code computes it): pairs up to i(32) keep theta, from i(1) on they get theta / s.
        def index(turns):
            return head_size * math.log(trained_length / (turns * 2 * math.pi)) / (2 * math.log(base))
        low = max(math.floor(index(32)), 0)
        high = min(math.ceil(index(1)), head_size - 1)
        if low == high:
            high += 0.001
        i = torch.arange(head_size // 2, dtype=torch.float64)
        keep = 1 - ((i - low) / (high - low)).clamp(0.0, 1.0)
        return theta / scale * (1 - keep) + theta * keep
    return theta
