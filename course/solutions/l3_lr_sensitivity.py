"""Exercise 3.2, reference solution: LR sensitivity (sweep.py, lr_sensitivity)."""

import math


def lr_sensitivity(final_losses, init_loss):
    capped = [init_loss if loss is None or not math.isfinite(loss) else min(loss, init_loss)
              for loss in final_losses]
    best = min(capped)
    return sum(loss - best for loss in capped) / len(capped)
