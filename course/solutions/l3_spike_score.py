"""Exercise 3.1, reference solution: OLMo 2's spike score (metrics.py, spike_score), step by step."""

import numpy as np


def spike_score(values, window=100, threshold=7.0):
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    spikes = judged = 0
    for i in range(window, len(x)):
        past = x[i - window:i]
        if past.max() == past.min():
            continue
        judged += 1
        spikes += abs(x[i] - past.mean()) >= threshold * past.std()
    return 100.0 * spikes / judged if judged else 0.0
