"""Exercise 1.2: top-p (nucleus) filtering (lesson 1).

Sampling from the whole distribution now and then picks a very unlikely token,
and one bad token derails the rest of the text. Nucleus sampling (Holtzman et
al. 2020, arXiv 1904.09751) samples only among the most likely tokens: the
smallest set, taken from the most likely down, whose probabilities add up to at
least top_p. The token that carries the total past top_p is kept, so at least
one token always survives.

Write `top_p_filter`. The checker tests it on hand-made distributions, then puts
it into model.py's sampler (`sample_next`, used by sample.py's --top_p) and
checks that sampling with a seed gives the reference's tokens.

    python -m course.check 1.2
"""


def top_p_filter(logits, top_p):
    """Logits (B, vocab) with every token outside the nucleus set to -inf.

    logits: (B, vocab) float tensor, one distribution per row (softmax of the row).
    top_p: a float in (0, 1]; 1 keeps every token.

    Returns a tensor of the same shape: the kept tokens' logits unchanged and in
    their places (token i stays in column i), the others -inf. Rows are
    independent. Hint: torch.sort, softmax, cumsum, then scatter back.
    """
    raise NotImplementedError
