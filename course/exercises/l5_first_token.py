"""Exercise 5.1: F-Attn and Sink_1 from attention probabilities (lesson 5).

Two numbers say how much attention piles up on the first token:

- F-Attn (Qiu et al. 2025, Table 4): the attention probability on token 0,
  averaged over queries (and sequences), then over heads, then over layers.
- Sink_1 (Gu et al. 2024, "When Attention Sink Emerges", arXiv 2410.10781,
  Sec. 3): per (layer, head), the importance of token 0, alpha_1 = the mean over
  queries of A[t, 0]; Sink_1 is the percentage of (layer, head) pairs whose
  alpha_1 exceeds eps (0.3).

Write `first_token_attention`. The checker tests it on hand-made attention
maps, then on a real GPT's attention against metrics.py's numbers.

    python -m course.check 5.1
"""


def first_token_attention(probs_by_layer, eps=0.3):
    """(F-Attn, Sink_1) from the attention probabilities of every layer.

    probs_by_layer: a list with one tensor per layer, (B, H, T, T): probs[b, h, t, s]
        is how much query t attends to key s in sequence b, head h (each row sums to 1;
        causal, so zero for s > t).
    eps: the threshold of Sink_1.

    Returns (f_attn, sink_1): f_attn a float in [0, 1]; sink_1 a percentage in [0, 100].
    """
    raise NotImplementedError
