"""Exercise 2.1, reference solution: G1 gated attention (model.py, CausalSelfAttention.forward)."""

import torch
import torch.nn.functional as F


def gated_attention(x, w_attn, w_proj, n_head, gate):
    B, T, C = x.shape
    D = C // n_head
    q, k, v, g = (x @ w_attn.T).split([C, C, C, w_attn.size(0) - 3 * C], dim=-1)
    q, k, v = (t.view(B, T, n_head, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)  # (B, T, H, D)
    scores = torch.sigmoid(g).view(B, T, n_head, D if gate == "elementwise" else 1)
    return (y * scores).reshape(B, T, C) @ w_proj.T
