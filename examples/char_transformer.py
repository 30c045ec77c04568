"""A tiny character-level transformer trained with ``osp.hyperbolic_adamw``.

The text is the source code of Python's own ``textwrap`` module (read with ``inspect``), so the
example runs offline on any machine. The model is a two-block causal transformer in Flax NNX;
the optimizer is AdamW followed by HAM's hyperbolic step on the matrices (``hyperbolic_adamw``,
the composition ``osp.compose(optax.adamw(...), osp.hyperbolic_step(...))``), trained through
``nnx.Optimizer``. The script reports the validation loss in bits per character and the fraction
of small weights, then samples a few characters greedily.

Run ``python examples/char_transformer.py`` (``--fast`` for a few steps).
"""

from __future__ import annotations

import argparse
import inspect
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_sparse as osp


def load_text() -> str:
  """The source of the standard library's ``textwrap`` module (ships with Python)."""
  return inspect.getsource(textwrap)


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
  text = load_text()
  chars = sorted(set(text))
  ids = np.array([chars.index(c) for c in text], np.int32)
  split = int(0.9 * len(ids))
  train_ids, val_ids = ids[:split], ids[split:]
  rng = np.random.default_rng(0)

  def batch(source: np.ndarray, size: int) -> np.ndarray:
    starts = rng.integers(0, len(source) - context - 1, size)
    return np.stack([source[s : s + context + 1] for s in starts])

  model = CharTransformer(len(chars), context, dim, depth=depth, heads=4, rngs=nnx.Rngs(0))
  lr = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, steps // 20), steps)
  tx = osp.hyperbolic_adamw(lr, weight_decay=1e-4, alpha=50.0, beta=1e-3)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  bar = tqdm(range(steps), desc="train")
  for _ in bar:
    loss = _train_step(model, optimizer, batch(train_ids, 32))
    bar.set_postfix(loss=f"{float(loss):.3f}")
  val = float(np.mean([_eval_loss(model, batch(val_ids, 64)) for _ in range(4)]))
  kernels = [x for x in jax.tree.leaves(nnx.state(model, nnx.Param)) if x.ndim >= 2]
  small = sum(int(jnp.sum(jnp.abs(k) < 1e-3)) for k in kernels) / sum(k.size for k in kernels)
  print(f"{len(text)} characters, vocabulary {len(chars)}; validation {val / np.log(2):.3f} "
        f"bits/char; {small:.1%} of matrix weights below 1e-3")
  prompt = list(ids[:context])
  for _ in range(0 if args.fast else 120):
    logits = model(jnp.asarray(prompt[-context:])[None])
    prompt.append(int(jnp.argmax(logits[0, -1])))
  print("sample:", "".join(chars[i] for i in prompt[context:]))
  return val


if __name__ == "__main__":
  main()
