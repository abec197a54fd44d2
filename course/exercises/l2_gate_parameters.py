"""Exercise 2.2: what the gate costs in parameters (lesson 2).

The gate is one more matrix per layer. How big it is depends on the variant:
elementwise or headwise, one set of scores per head or shared by all heads,
after SDPA (G1) or after the output projection (G5), computed from X or a
learned constant (input-independent), with or without biases. Read
model.py's GPTConfig.gate_shape and CausalSelfAttention.__init__, then write
the count. The checker builds each variant with model.py's GPT and compares
your count with the difference in GPT.num_params().

    python -m course.check 2.2
"""


def gate_parameters(config):
    """How many parameters the gate adds to the whole model, compared with gate="none".

    config: a model.GPTConfig. The keys that matter: gate ("none", "headwise",
    "elementwise"), gate_heads ("specific", "shared"), gate_position ("sdpa",
    "value", "key", "query", "output"), gate_input ("dependent", "independent"),
    bias, n_layer, n_head, n_embd.
    """
    raise NotImplementedError
