"""Exercise 3.1: the spike score (lesson 3).

OLMo 2 (arXiv 2501.00656, Sec. 3) measures how spiky training is with one
number: the percentage of steps whose value (loss or gradient norm) lies at
least `threshold` standard deviations away from the mean of the `window` values
just before it. train.py logs it at every evaluation; compare.py and sweep.py
report it.

Write `spike_score`. The checker compares it with metrics.py's on made-up
curves, then lets train.py's evaluation record use yours.

    python -m course.check 3.1
"""


def spike_score(values, window=100, threshold=7.0):
    """The percentage (0-100) of steps at least `threshold` standard deviations
    from the mean of the `window` values before them.

    values: a sequence of floats (one per training step).
    Rules (they match metrics.spike_score):
    - drop non-finite values (NaN, inf) first;
    - step i can be judged only if `window` values come before it: values[i-window:i];
      the current value is not part of its own window;
    - a window whose values are all equal has no spread to measure by: the step
      is not judged (neither a spike nor counted);
    - use the population standard deviation (numpy's default, ddof=0);
    - return 100 * spikes / judged steps, or 0.0 when no step can be judged.
    """
    raise NotImplementedError
