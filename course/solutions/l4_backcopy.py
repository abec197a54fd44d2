"""Exercise 4.1, reference solution: the Bigram-Backcopy generator (Guo et al. 2024)."""

import torch


def backcopy_sequence(transitions, triggers, bos, length, generator):
    plain = torch.tensor([t for t in range(transitions.size(0)) if t not in triggers])
    first = plain[torch.randint(len(plain), (1,), generator=generator)].item()
    seq = [bos, first]
    while len(seq) < length:
        if seq[-1] in triggers:
            seq.append(seq[-2])  # the back-copy: the token before the trigger
        else:
            seq.append(torch.multinomial(transitions[seq[-1]], 1, generator=generator).item())
    return seq[:length]
