"""A tiny character-level transformer trained with ``osp.hyperbolic_adamw``, that generalises.

The text is the source code of sixteen modules of Python's own standard library (``textwrap``,
``argparse``, ``difflib``, ... read with ``inspect``; about 600k characters), so the example runs
offline on any machine. The text is cut into blocks of 2048 characters and every tenth block is
held out for validation, so the validation text is unseen but from the same distribution. The
model is a two-block causal transformer in Flax NNX (dimension 64, context 64); 600 steps of 32
windows see about 1.2M characters, two passes over the training text, which is too little to
memorise it: the script prints train and validation bits per character measured the same way
(on the same number of windows of each split, after training), which stay close (measured: train
2.32, validation 2.43 bits/char), and a sample drawn at temperature 0.7 from a validation prompt,
which reads like Python (indentation, ``self._...`` attributes, calls and assignments). An earlier
version trained on ``textwrap`` alone (20k characters) and memorised it: train 0.90 bits/char,
validation 3.73.

The optimizer is AdamW followed by HAM's hyperbolic step on the matrices (``hyperbolic_adamw``,
the composition ``osp.compose(optax.adamw(...), osp.hyperbolic_step(...))``), trained through
``nnx.Optimizer``; the script also reports the fraction of small matrix weights.

Run ``python examples/char_transformer.py`` (``--fast`` for a few steps).
"""

from __future__ import annotations

import argparse
import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_sparse as osp

MODULES = ("textwrap", "string", "difflib", "argparse", "calendar", "fractions", "shlex", "csv",
           "configparser", "dataclasses", "enum", "pprint", "statistics", "tokenize", "random",
           "ftplib")
BLOCK = 2048  # characters per block of the train/validation split


def load_text(modules: tuple[str, ...] = MODULES) -> str:
  """The source of some standard-library modules (they ship with Python), ASCII only."""
  text = "\n\n".join(inspect.getsource(importlib.import_module(m)) for m in modules)
  return text.encode("ascii", "replace").decode("ascii")


def split_blocks(ids: np.ndarray, every: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Train and validation ids: every ``every``-th block of ``BLOCK`` characters is validation."""
  blocks = [ids[i:i + BLOCK] for i in range(0, len(ids), BLOCK)]
  val = [b for i, b in enumerate(blocks) if i % every == every - 1]
  train = [b for i, b in enumerate(blocks) if i % every != every - 1]
  return np.concatenate(train), np.concatenate(val)


class Block(nnx.Module):
  def __init__(self, dim: int, heads: int, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
    self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
    self.down = nnx.Linear(4 * dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x), mask=mask)
    return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
  def __init__(self, vocab: int, context: int, dim: int, depth: int, heads: int, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, dim, rngs=rngs)
    self.position = nnx.Param(jax.random.normal(rngs.params(), (context, dim)) * 0.02)
    self.blocks = nnx.List([Block(dim, heads, rngs) for _ in range(depth)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.head = nnx.Linear(dim, vocab, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.position[: tokens.shape[-1]]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.norm(x))


def _loss(model: CharTransformer, batch: jax.Array) -> jax.Array:
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


@nnx.jit
def _train_step(model: CharTransformer, optimizer: nnx.Optimizer, batch: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(_loss)(model, batch)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _eval_loss(model: CharTransformer, batch: jax.Array) -> jax.Array:
  return _loss(model, batch)


def main(argv: list[str] | None = None) -> float:
  from tqdm.auto import tqdm

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  args = parser.parse_args(argv)
  steps, context, dim, depth = (15, 32, 32, 1) if args.fast else (600, 64, 64, 2)
  text = load_text(MODULES[:2] if args.fast else MODULES)
  chars = sorted(set(text))
  lookup = np.zeros(128, np.int32)
  lookup[[ord(c) for c in chars]] = np.arange(len(chars))
  ids = lookup[np.frombuffer(text.encode("ascii"), np.uint8)]
  train_ids, val_ids = split_blocks(ids)
  rng = np.random.default_rng(0)

  def batch(source: np.ndarray, size: int, rng=rng) -> np.ndarray:
    starts = rng.integers(0, len(source) - context - 1, size)
    return np.stack([source[s : s + context + 1] for s in starts])

  model = CharTransformer(len(chars), context, dim, depth=depth, heads=4, rngs=nnx.Rngs(0))
  lr = optax.warmup_cosine_decay_schedule(0.0, 1e-2, max(1, steps // 20), steps)
  tx = osp.hyperbolic_adamw(lr, weight_decay=1e-4, alpha=50.0, beta=1e-3)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  bar = tqdm(range(steps), desc="train", mininterval=2.0)
  for _ in bar:
    loss = _train_step(model, optimizer, batch(train_ids, 32))
    bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)

  def bits(source: np.ndarray) -> float:  # the same 8 x 64 windows of each split, after training
    eval_rng = np.random.default_rng(1)
    loss = np.mean([_eval_loss(model, batch(source, 64, eval_rng)) for _ in range(8)])
    return float(loss / np.log(2))

  train_bits, val_bits = bits(train_ids), bits(val_ids)
  kernels = [x for x in jax.tree.leaves(nnx.state(model, nnx.Param)) if x.ndim >= 2]
  small = sum(int(jnp.sum(jnp.abs(k) < 1e-3)) for k in kernels) / sum(k.size for k in kernels)
  print(f"{len(text)} characters ({len(train_ids)} train, {len(val_ids)} validation), vocabulary "
        f"{len(chars)}; train {train_bits:.3f} bits/char, validation {val_bits:.3f} bits/char; "
        f"{small:.1%} of matrix weights below 1e-3")
  # A sample at temperature 0.7 from a validation prompt (unseen text).
  prompt = list(val_ids[:context])
  key = jax.random.key(0)
  for _ in range(0 if args.fast else 300):
    key, sub = jax.random.split(key)
    logits = model(jnp.asarray(prompt[-context:])[None])[0, -1]
    prompt.append(int(jax.random.categorical(sub, logits / 0.7)))
  print("prompt:", repr("".join(chars[i] for i in prompt[:context])))
  print("sample:", "".join(chars[i] for i in prompt[context:]))
  return val_bits * np.log(2)


if __name__ == "__main__":
  main()
