"""Exercise 4.1: the Bigram-Backcopy generator (lesson 4).

Guo et al. 2024 ("Active-Dormant Attention Heads", arXiv 2410.13835) make
attention sinks appear, with a known cause, in tiny transformers trained on
this task: tokens follow a bigram Markov chain, except that right after one of
a few *trigger* tokens the next token copies the token just before the trigger.
A head that does the copy is needed only after a trigger; everywhere else it
has to do nothing, and a softmax head does nothing by attending to BOS.

Write `backcopy_sequence`. The checker tests the rules on many draws and the
bigram statistics of the non-copied steps, then compares your tokens'
frequencies with those of the dataset's generator, lab.backcopy.backcopy_sequences.

    python -m course.check 4.1
"""


def backcopy_sequence(transitions, triggers, bos, length, generator):
    """One Bigram-Backcopy sequence of `length` token ids (a list of ints), BOS first.

    transitions: (V, V) float tensor; row a is P(next token | token a) over the
        tokens 0 .. V-1 (each row sums to 1).
    triggers: a set of token ids (a few of 0 .. V-1).
    bos: the BOS id (V: one past the tokens; it never appears after position 0).
    length: the number of tokens, BOS included (at least 2).
    generator: a torch.Generator; draw every random number from it (e.g.
        torch.multinomial(probs, 1, generator=generator)), so a seed gives one sequence.

    The rules:
    - position 0 is BOS;
    - position 1 is drawn uniformly from the tokens that are not triggers;
    - at every later position t: if token t-1 is a trigger, token t copies token t-2;
      otherwise token t is drawn from row transitions[token t-1].
    """
    raise NotImplementedError
