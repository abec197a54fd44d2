"""Exercise 6.1: RoPE scaling rules (lesson 6).

RoPE rotates channel pair i of q and k by the angle m * theta_i at position m,
with theta_i = base^(-2i/D) for i = 0 .. D/2-1 (model.py, rope_tables). A model
trained on L positions has never seen angles beyond L * theta_i. To read s times
longer texts without retraining, the frequencies are changed:

- "pi", position interpolation (Chen et al. 2023, arXiv 2306.15595): every
  frequency divided by s (the same as positions m -> m / s);
- "ntk", NTK-aware scaling (bloc97 2023): the base becomes base * s^(D / (D - 2)),
  positions unchanged: the fastest pair keeps its frequency, the slowest is divided by s;
- "yarn" (Peng et al. 2023, arXiv 2309.00071, "NTK-by-parts"): per pair, the number
  of rotations within the trained length, r_i = L * theta_i / (2 pi), sets a ramp
  gamma_i = clamp((r_i - alpha) / (beta - alpha), 0, 1) with alpha = 1, beta = 32;
  the new frequency is (1 - gamma_i) * theta_i / s + gamma_i * theta_i: slow pairs
  are interpolated, fast pairs kept.

Write `scaled_frequencies`. The checker compares it with the formulas for several
(D, s, L), checks that every rule is plain RoPE at s = 1, and compares it with
model.rope_frequencies, the frequencies the model itself rotates by.

    python -m course.check 6.1
"""


def scaled_frequencies(head_size, base, scale, method, trained_length):
    """The RoPE frequencies theta_i (a float64 tensor of head_size // 2 values) after scaling.

    head_size: D, even. base: the RoPE base (10000). scale: s >= 1.
    method: "none" (plain RoPE), "pi", "ntk" or "yarn".
    trained_length: L, the context the model was trained at (used by YaRN).
    """
    raise NotImplementedError
