"""One-shot pruning of a small pretrained transformer: magnitude, Wanda, OWL + Wanda, SparseGPT.

The model and the text are those of ``examples/char_transformer.py`` (a character-level Flax NNX
transformer on the source of Python's ``textwrap`` module, imported from there). It is first
trained dense with AdamW, then every linear layer inside the transformer blocks (attention
query/key/value/out, MLP up/down; not the embeddings nor the output head, as in the papers) is
pruned once, at 50% unstructured and at 2:4, from 8 calibration batches of the training text:

* magnitude: the smallest ``|W|`` of every output neuron;
* Wanda: the smallest ``|W| · ||X||`` of every output neuron (``osp.pruning.input_norms``);
* OWL + Wanda (50% only): Wanda with OWL's layer densities (M = 5, λ = 0.08), mean kept at 50%;
* SparseGPT: the OBS update from ``H = XᵀX`` (``osp.pruning.sparsegpt``).

All four run through ``osp.pruning.prune_layerwise`` block by block (the calibration inputs of
block ``k`` come from the model whose earlier blocks are already pruned, as the official Wanda
and SparseGPT drivers do). The script prints the validation perplexity (per character) of each
and draws them in a bar chart.

Run ``python examples/prune_char_transformer.py`` (``--fast`` for a tiny model; ``--out`` for
the figure's path).
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_sparse as osp


def _char_transformer():
  """The sibling example module (its model and text), imported from its file."""
  path = pathlib.Path(__file__).with_name("char_transformer.py")
  spec = importlib.util.spec_from_file_location("char_transformer_example", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _loss(model: nnx.Module, batch: jax.Array) -> jax.Array:
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


@nnx.jit
def _train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(_loss)(model, batch)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _eval_loss(model: nnx.Module, batch: jax.Array) -> jax.Array:
  return _loss(model, batch)


def perplexity(model: nnx.Module, windows: np.ndarray) -> float:
  """exp of the mean next-character cross-entropy over fixed validation windows."""
  return float(np.exp(np.mean([_eval_loss(model, w) for w in windows])))


def in_blocks(path: tuple) -> bool:
  """The kernels the papers prune: linear layers inside the transformer blocks."""
  return path[0] == "blocks"


def main(argv: list[str] | None = None) -> dict[str, float]:
  from tqdm.auto import tqdm

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a tiny model, a few steps (tests)")
  parser.add_argument("--out", default="prune_char_transformer.png", help="figure path")
  args = parser.parse_args(argv)
  # The text is small (about 20k characters): past ~300 steps the model memorizes it and the
  # validation perplexity rises again, so the schedule ends there.
  steps, context, dim, depth = (40, 32, 32, 1) if args.fast else (300, 64, 64, 2)
  example = _char_transformer()
  text = example.load_text()
  chars = sorted(set(text))
  ids = np.array([chars.index(c) for c in text], np.int32)
  split = int(0.9 * len(ids))
  train_ids, val_ids = ids[:split], ids[split:]
  rng = np.random.default_rng(0)

  def batch(size: int) -> np.ndarray:
    starts = rng.integers(0, len(train_ids) - context - 1, size)
    return np.stack([train_ids[s : s + context + 1] for s in starts])

  n_val = (len(val_ids) - 1) // (context + 1)
  windows = val_ids[: n_val // 16 * 16 * (context + 1)].reshape(-1, 16, context + 1)
  windows = windows[:2] if args.fast else windows

  dense = example.CharTransformer(len(chars), context, dim, depth=depth, heads=4,
                                  rngs=nnx.Rngs(0))
  lr = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, steps // 20), steps)
  optimizer = nnx.Optimizer(dense, optax.adamw(lr, weight_decay=0.1), wrt=nnx.Param)
  bar = tqdm(range(steps), desc="train dense")
  for _ in bar:
    bar.set_postfix(loss=f"{float(_train_step(dense, optimizer, batch(32))):.3f}")

  # Calibration: 8 batches of 16 windows of the training text, the model's input tokens only.
  calibration = [jnp.asarray(batch(16)[:, :-1]) for _ in range(2 if args.fast else 8)]
  norms = jax.tree_util.tree_map_with_path(
      lambda path, s: s if in_blocks(tuple(k.key for k in path)) else None,
      osp.pruning.input_norms(dense, calibration), is_leaf=lambda x: x is None)
  params = nnx.to_pure_dict(nnx.state(dense, nnx.Param))
  scores = osp.pruning.wanda_scores(params, norms)
  eligible = jax.tree.map(lambda s: s is not None, scores, is_leaf=lambda x: x is None)
  owl = osp.owl(scores, m=5.0, lam=0.08)
  owl_densities = owl.densities(params, 0.5, eligible)

  def block(path: tuple) -> tuple:
    return path[:2]

  results = {"dense": perplexity(dense, windows)}
  runs = [("magnitude", "magnitude", {}), ("Wanda", "wanda", {}),
          ("OWL + Wanda", "wanda", {"densities": owl_densities}),
          ("SparseGPT", "sparsegpt", {})]
  for pattern, pattern_args in (("50%", {"sparsity": 0.5}), ("2:4", {"n": 2, "m": 4})):
    for name, method, extra in runs:
      if extra and pattern != "50%":
        continue  # OWL sets layer densities; a 2:4 pattern fixes them at 50%.
      model = nnx.clone(dense)
      kwargs = {**pattern_args, **extra}
      if "densities" in kwargs:
        kwargs.pop("sparsity")
      _, masks = osp.pruning.prune_layerwise(
          model, calibration, method=method, include=in_blocks, stage_of=block, **kwargs)
      kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
      total = sum(int(m.size) for m in jax.tree.leaves(masks))
      results[f"{name} {pattern}"] = perplexity(model, windows)
      print(f"{name:12s} {pattern:4s} perplexity {results[f'{name} {pattern}']:8.3f} "
            f"(block-kernel sparsity {1 - kept / total:.1%})")
  print(f"dense             perplexity {results['dense']:8.3f}")
  if not args.fast:
    layer_d = {jax.tree_util.keystr(p): round(float(d), 3) for p, d in
               jax.tree_util.tree_flatten_with_path(owl_densities)[0]}
    print("OWL densities:", layer_d)
  _plot(results, args.out)
  return results


def _plot(results: dict[str, float], out: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(results)
  fig, ax = plt.subplots(figsize=(8, 3.5))
  colors = ["0.4" if n == "dense" else ("C0" if n.endswith("50%") else "C1") for n in names]
  ax.bar(range(len(names)), [results[n] for n in names], color=colors)
  ax.axhline(results["dense"], color="0.4", lw=0.8, ls="--")
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_ylabel("validation perplexity (per char)")
  ax.set_title("One-shot pruning of the char transformer's blocks (50% blue, 2:4 orange)")
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  main()
