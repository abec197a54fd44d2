"""Exercise 2.1: the gate in the attention forward (lesson 2).

Write one attention layer with the paper's G1 gate (Qiu et al. 2025, Sec. 2,
arXiv 2505.06708), as model.py's CausalSelfAttention.forward computes it:

    Q, K, V, G = X W_attn^T, split into C, C, C and the gate's columns
    Y  = softmax(Q K^T / sqrt(D) + causal mask) V      per head, D = C / n_head
    Y' = Y * sigmoid(G)                                 the gate, per query token
    out = concat_heads(Y') W_proj^T

The checker compares your function with model.py's attention, checks that no
token sees the future, then puts your function into a GPT in place of model.py's
attention and checks its logits and the gradients that reach W_g.

    python -m course.check 2.1
"""


def gated_attention(x, w_attn, w_proj, n_head, gate):
    """The output (B, T, C) of a causal attention layer with a G1 gate.

    x: (B, T, C), the normed input X (the same tensor feeds q, k, v and the gate).
    w_attn: the weight of model.py's c_attn, (3C + G, C), used as x @ w_attn.T;
        its output columns are q (C), k (C), v (C), then the gate's G columns.
        Column h * D + d of q, k, v and an elementwise gate belongs to head h, channel d.
    w_proj: the weight of c_proj, (C, C), used as y @ w_proj.T.
    n_head: number of heads H; head size D = C // H.
    gate: "elementwise" (G = C: one score per head and channel) or
        "headwise" (G = H: one score per head, the same for all its D channels).

    No biases, dropout or position encoding. torch.nn.functional.scaled_dot_product_attention
    with is_causal=True does the softmax part, or write it out yourself.
    """
    raise NotImplementedError
