"""Exercise 1.2, reference solution: top-p filtering (model.py, filter_logits)."""

import torch
import torch.nn.functional as F


def top_p_filter(logits, top_p):
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # the crossing token stays
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
