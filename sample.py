"""Sample text from a trained model, streaming it as it is generated.

    python sample.py --out_dir=out
    python sample.py --out_dir=out --prompt="ROMEO:" --num_samples=2 --max_new_tokens=300 --top_p=0.9
    python sample.py --out_dir=out --prompt=FILE:prompt.txt --temperature=0
    python sample.py --out_dir=out --rope_scaling=yarn --rope_factor=4   # a RoPE model keeps 4 x block_size

nanoGPT checkpoints and GPT-2's weights are imported into a run folder first (python -m lab.pretrained).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import prepare_data
import train
from configurable import ConfigError, opt, parse_args, run_main


@dataclass
class SampleConfig:
    out_dir: str = opt("out", "run folder holding ckpt.pt")
    prompt: str = opt("\n", "text to continue, or FILE:path to read it from a file")
    num_samples: int = opt(3, "how many samples to draw")
    max_new_tokens: int = opt(500, "tokens to generate per sample")
    temperature: float = opt(0.8, "softmax temperature; 0 picks the most likely token (then one sample)")
    top_k: int = opt(200, "sample among the k most likely tokens (0: all)")
    top_p: float = opt(1.0, "nucleus sampling: the smallest set of tokens with this probability (1: all)")
    seed: int = opt(1337, "random seed")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto | float32 | bfloat16 | float16")
    threads: int = opt(0, "CPU threads for PyTorch (0: PyTorch's choice; 1 on a busy machine)")
    rope_scaling: str = opt("", "RoPE models: keep rope_factor x block_size tokens of context, with this "
                                "scaling (none | pi | ntk | dynamic_ntk | yarn); empty: the model's own")
    rope_factor: float = opt(0.0, "with rope_scaling: the context kept, in multiples of block_size "
                                  "(0: the model's own)")

    def __post_init__(self):
        train.check_runtime_settings(self.device, self.dtype, self.threads)
        if self.temperature < 0:
            raise ConfigError("temperature cannot be negative")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0 or self.num_samples < 1 or self.max_new_tokens < 0:
            raise ConfigError("top_k, num_samples and max_new_tokens must not be negative (num_samples at least 1)")
        if self.rope_factor and not self.rope_scaling:
            raise ConfigError("rope_factor needs a rope_scaling: add e.g. --rope_scaling=yarn")

    def model_changes(self):
        """The RoPE settings that replace the checkpoint's, as model_from_checkpoint takes them."""
        changes = {"rope_scaling": self.rope_scaling} if self.rope_scaling else {}
        return {**changes, "rope_factor": self.rope_factor} if self.rope_factor else changes


def read_prompt(prompt):
    if prompt.startswith("FILE:"):
        path = Path(prompt[5:])
        if not path.is_file():
            raise ConfigError(f"prompt file '{path}' not found")
        return path.read_text(encoding="utf-8")
    return prompt


def encode_prompt(tokenizer, text):
    try:
        ids = tokenizer.encode(text)
    except ValueError as e:
        raise ConfigError(f"prompt: {e}") from None
    if not ids:
        raise ConfigError("the prompt is empty: give at least one character with --prompt")
    return ids


def stream_text(model, tokenizer, ids, cfg, generator, runtime, out=sys.stdout):
    """Generate one sample, writing text as soon as it decodes; returns the new token ids."""
    idx = torch.tensor([ids], dtype=torch.long, device=runtime.device)
    new, shown = [], ""
    with runtime.autocast():
        for token in model.stream(idx, cfg.max_new_tokens, temperature=cfg.temperature,
                                  top_k=cfg.top_k or None, top_p=cfg.top_p, generator=generator):
            new.append(token.item())
            # Decode everything so far: a BPE token can end inside a multi-byte character.
            text = tokenizer.decode(new)
            if not text.endswith("\ufffd"):
                out.write(text[len(shown):])
                out.flush()
                shown = text
    out.write(tokenizer.decode(new)[len(shown):] + "\n")
    return new


def main(argv=None):
    (cfg,) = parse_args([SampleConfig], argv, prog="sample.py", description=__doc__)
    runtime = train.setup_runtime(cfg.device, cfg.dtype, cfg.threads)
    ckpt = train.load_checkpoint(Path(cfg.out_dir) / "ckpt.pt", keys=("model", "config", "meta"))
    model = train.model_from_checkpoint(ckpt, runtime.device, **cfg.model_changes())
    tokenizer = prepare_data.tokenizer_from_meta(ckpt["meta"])
    if cfg.rope_scaling not in ("", "none") and model.config.rope_factor == 1.0:
        raise ConfigError(f"rope_scaling={cfg.rope_scaling} with rope_factor=1 keeps block_size tokens as "
                          "before: add e.g. --rope_factor=4 (the context kept, in multiples of block_size)")
    ids = encode_prompt(tokenizer, read_prompt(cfg.prompt))
    generator = torch.Generator(runtime.device).manual_seed(cfg.seed)
    num_samples = cfg.num_samples
    if cfg.temperature == 0 and num_samples > 1:
        print(f"note: temperature=0 always picks the most likely token, so all {num_samples} samples would "
              "be the same: drawing one", file=sys.stderr)
        num_samples = 1
    samples = []
    for i in range(num_samples):
        if i:
            print("-" * 40)
        sys.stdout.write(tokenizer.decode(ids))
        samples.append(stream_text(model, tokenizer, ids, cfg, generator, runtime))
    return samples


if __name__ == "__main__":
    run_main(main)
