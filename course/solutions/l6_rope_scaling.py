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
        rotations = trained_length * theta / (2 * math.pi)
        gamma = ((rotations - 1.0) / (32.0 - 1.0)).clamp(0.0, 1.0)
        return (1 - gamma) * theta / scale + gamma * theta
    return theta
