"""Exercise 5.2: M-Act, massive activations (lesson 5).

Sun et al. 2024 ("Massive Activations in Large Language Models", arXiv 2402.17762)
found a few activations of the residual stream thousands of times larger than the
median. Qiu et al. 2025 (Table 4) report M-Act: per layer, the largest |h| of
the layer's output, averaged over layers. Beside it we report the largest
max/median ratio of any layer (Sun et al. flag ratios over 1000).

Write `massive_activations`. The checker tests it on hand-made hidden states,
then on a real GPT's residual stream against metrics.py's numbers.

    python -m course.check 5.2
"""


def massive_activations(hidden_by_layer):
    """(M-Act, ratio) from the residual stream after each block.

    hidden_by_layer: a list with one tensor per layer, (B, T, C), the output of that
        block (model.py's Block.forward returns it).

    Returns (m_act, ratio):
    - m_act: the mean over layers of max |h| (over batch, positions and channels);
    - ratio: the largest over layers of max |h| / median |h| of that layer.
    """
    raise NotImplementedError
