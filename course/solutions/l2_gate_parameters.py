"""Exercise 2.2, reference solution: the gate's parameters (model.py, GPTConfig.gate_shape)."""

def gate_parameters(config):
    if config.gate == "none":
        return 0
    if config.gate_position == "output":
        width = config.n_embd
    else:
        heads = config.n_head if config.gate_heads == "specific" else 1
        width = heads * (config.head_size if config.gate == "elementwise" else 1)
    if config.gate_input == "independent":
        per_layer = width  # one learned logit per score, no matrix
    else:
        per_layer = width * config.n_embd + (width if config.bias else 0)  # W_g's columns of c_attn
    return config.n_layer * per_layer
