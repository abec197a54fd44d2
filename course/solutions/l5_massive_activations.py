"""Exercise 5.2, reference solution: M-Act and the max/median ratio (metrics.py, Stats._hidden)."""


def massive_activations(hidden_by_layer):
    peaks = [h.abs().max().item() for h in hidden_by_layer]
    medians = [h.abs().median().item() for h in hidden_by_layer]
    return sum(peaks) / len(peaks), max(p / m for p, m in zip(peaks, medians))
