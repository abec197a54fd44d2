"""Exercise 5.1, reference solution: F-Attn and Sink_1 (metrics.py, Stats._attn_probs and _attention_summary)."""

import torch


def first_token_attention(probs_by_layer, eps=0.3):
    # alpha[l, h]: attention on key 0 (column 0), averaged over sequences and queries.
    alpha = torch.stack([probs[..., 0].double().mean(dim=(0, 2)) for probs in probs_by_layer])  # (L, H)
    return alpha.mean().item(), 100.0 * (alpha > eps).double().mean().item()
