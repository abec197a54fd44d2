"""Exercise 6.1: RoPE scaling rules (lesson 6).

RoPE rotates channel pair i of q and k by the angle m * theta_i at position m,
with theta_i = base^(-2i/D) for i = 0 .. D/2-1 (model.py, rope_tables). A model
trained on L positions has never seen angles beyond L * theta_i. To read s times
longer texts without retraining, the frequencies are changed:

- "pi", position interpolation (Chen et al. 2023, arXiv 2306.15595): every
  frequency divided by s (the same as positions m -> m / s);
- "ntk", NTK-aware scaling (bloc97 2023): the base becomes base * s^(D / (D - 2)),
  positions unchanged: the fastest pair keeps its frequency, the slowest is divided by s;
- "yarn" (Peng et al. 2023, arXiv 2309.00071, "NTK-by-parts"), as the authors' code
  (and transformers, vLLM, llama.cpp) computes it: pairs that turn at least 32 times
  within the trained length keep their frequency, pairs that turn at most once are
  interpolated (theta_i / s), and the ones in between are blended. The pair that
  turns n times within L is i(n) = D * ln(L / (2 pi n)) / (2 ln base) (solve
  L * theta_i / (2 pi) = n for i). With low = max(floor(i(32)), 0) and
  high = min(ceil(i(1)), D - 1) (if they are equal, add 0.001 to high), the share
  of its own frequency pair i keeps is keep_i = 1 - clamp((i - low) / (high - low), 0, 1),
  linear in the pair index i, and the new frequency is
  theta_i / s * (1 - keep_i) + theta_i * keep_i.

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
