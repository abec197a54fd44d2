"""Exercise 3.2: LR sensitivity (lesson 3).

Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322, Sec. 2) sum up a learning-rate sweep in one
number: how much worse than the best learning rate the others are, on average.
sweep.py reports it per variant.

Write `lr_sensitivity`. The checker compares it with sweep.py's on made-up
sweeps, then lets sweep.py's summary use yours.

    python -m course.check 3.2
"""


def lr_sensitivity(final_losses, init_loss):
    """Mean over the grid of min(final loss, init_loss) - best, where best is the lowest of those values.

    final_losses: one final val loss per learning rate of the grid; None for a run
        that diverged. A diverged run, or one whose loss is not finite, counts as
        init_loss; so does a run that ended above the loss at initialisation.
    init_loss: the val loss at initialisation (step 0).
    """
    raise NotImplementedError
