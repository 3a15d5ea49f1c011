"""Where the fused log-prob's work lives on a mesh, and how partial results are merged.

Partial statistics. Every implementation computes, for a slice of the vocabulary (a
kernel tile, a vocabulary chunk, a `tensor` shard), three float32 numbers per token:
  lse = log sum_j exp(l_j)           over the slice,
  ent = the entropy of softmax(l) restricted to the slice (nats),
  tgt = the target logit if the target lies in the slice, else 0.
Slices merge exactly: with L = log sum_k exp(lse_k) and w_k = exp(lse_k - L) (the slice's
probability mass),

    ent = sum_k w_k (ent_k + L - lse_k),   tgt = sum_k tgt_k,

since -sum_{j in k} p_j log p_j = w_k (ent_k + L - lse_k). Every term is >= 0, so nothing
cancels (the online-softmax merge of Milakov & Gimelshein 2018 extended to the entropy).

Layout on a mesh (`plan`): the tokens are split over the batch axes and every other
mesh axis that still divides them, except the axes that split the LM head's vocabulary
dimension: those run vocabulary-parallel (each device a slice of V, statistics merged
across the slices, d hidden summed). The head's embedding dimension stays split as it is
stored (FSDP); the head is all-gathered per vocabulary chunk and its gradient
reduce-scattered per chunk (`gather_rows`, `reduce_rows`), so no device holds the whole
head or a whole float32 d W unless one chunk is the whole vocabulary.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import PartitionSpec as P


# ---------------------------------------------------------------------- statistics
def merge_partials(lse: jax.Array, ent: jax.Array, tgt: jax.Array, axis: int = 0):
  """Merge stacked partial statistics of disjoint vocabulary slices along `axis`.

  Args:
    lse, ent, tgt: float32 arrays of the same shape; slice k at index k of `axis`.

  Returns:
    (lse, ent, tgt) of the union of the slices, `axis` removed. A slice with
    lse = -inf (no columns) contributes nothing.
  """
  total = jax.nn.logsumexp(lse, axis=axis, keepdims=True)
  w = jnp.exp(lse - total)
  ent = jnp.sum(jnp.where(w > 0, w * (ent + total - lse), 0.0), axis=axis)
  return jnp.squeeze(total, axis), ent, jnp.sum(tgt, axis=axis)


def merge_two(a, b):
  """merge_partials of two (lse, ent, tgt) triples."""
  return merge_partials(*(jnp.stack([x, y]) for x, y in zip(a, b)))


def merge_across(axes: tuple[str, ...], lse, ent, tgt):
  """merge_partials across the devices of mesh axes `axes` (inside shard_map): every
  device gets the merged (lse, ent, tgt)."""
  if not axes:
    return lse, ent, tgt
  top = jax.lax.pmax(lse, axes)
  total = top + jnp.log(jax.lax.psum(jnp.exp(lse - top), axes))
  w = jnp.exp(lse - total)
  ent = jax.lax.psum(jnp.where(w > 0, w * (ent + total - lse), 0.0), axes)
  return total, ent, jax.lax.psum(tgt, axes)


# ---------------------------------------------------------------------- layout
class Layout(NamedTuple):
  """How one fused call is laid out on its mesh (all tuples of mesh axis names).

  token_axes: split the tokens (major to minor).
  vocab_axes: split the head's vocabulary dimension (vocabulary-parallel; the tokens are
    replicated over them).
  row_axes: split the head's embedding dimension as stored (gathered per chunk).
  weight_in: PartitionSpec of the head inside shard_map (row_axes, vocab_axes); its
    gradient comes out in the same layout.
  """
  token_axes: tuple[str, ...] = ()
  vocab_axes: tuple[str, ...] = ()
  row_axes: tuple[str, ...] = ()
  weight_in: P = P()


def as_axes(entry) -> tuple[str, ...]:
  """A PartitionSpec entry (None, a name or a tuple of names) as a tuple of names."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def split_axes(mesh: jax.sharding.Mesh, token_axes: Any, num_tokens: int,
               exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
  """Mesh axes that split `num_tokens` tokens, major to minor: the batch axes
  `token_axes` (size-1 axes dropped), then every other mesh axis of size > 1 not in
  `exclude` that divides what is left (an axis that does not is logged: its devices
  repeat the same tokens).

  Raises:
    ValueError: the batch axes do not divide num_tokens, or name an unknown mesh axis.
  """
  given = as_axes(token_axes)
  unknown = [a for a in given if a not in mesh.shape]
  if unknown:
    raise ValueError(f"token_axes {unknown} are not axes of the mesh {dict(mesh.shape)}")
  axes = [a for a in given if mesh.shape[a] > 1]
  n = math.prod(mesh.shape[a] for a in axes)
  if num_tokens % n:
    raise ValueError(f"{num_tokens} tokens do not split over the batch axes {axes} "
                     f"({n} shards)")
  for a in mesh.axis_names:
    if a in given or a in exclude or mesh.shape[a] == 1:
      continue
    if num_tokens % (n * mesh.shape[a]) == 0:
      axes.append(a)
      n *= mesh.shape[a]
    else:
      logging.log_first_n(logging.WARNING, "fused log-prob: %d tokens do not split over mesh "
                          "axis %r as well; its %d devices compute the same tokens", 4,
                          num_tokens, a, mesh.shape[a])
  return tuple(axes)


def default_weight_spec(mesh: jax.sharding.Mesh, shape) -> P:
  """Layout of an LM head [D, V] under r1jax.sharding.DEFAULT_RULES (embed, vocab)."""
  from r1jax import sharding as shd
  return shd.logical_to_spec(("embed", "vocab"), shape, mesh, shd.DEFAULT_RULES,
                             on_indivisible="replicate")


def plan(mesh: jax.sharding.Mesh, token_axes: Any, num_tokens: int, weight_spec: P,
         vocab_parallel: bool = True) -> Layout:
  """The Layout of a fused call on `mesh` whose head is stored as `weight_spec`.

  vocab_parallel=False splits the tokens over every axis instead (the naive reference).

  Raises:
    ValueError: as split_axes.
  """
  spec = list(weight_spec) + [None] * (2 - len(weight_spec))
  batch = set(as_axes(token_axes))
  big = lambda entry: tuple(a for a in as_axes(entry) if mesh.shape[a] > 1)
  vocab = tuple(a for a in big(spec[1]) if a not in batch) if vocab_parallel else ()
  tokens = split_axes(mesh, token_axes, num_tokens, exclude=vocab)
  rows = big(spec[0]) if vocab_parallel else ()
  entry = lambda axes: None if not axes else (axes[0] if len(axes) == 1 else axes)
  return Layout(tokens, vocab, rows, P(entry(rows), entry(vocab)))


def vocab_offset(layout: Layout, mesh, local_vocab: int) -> jax.Array:
  """First global column of this device's vocabulary slice (inside shard_map)."""
  index = jnp.int32(0)
  for a in layout.vocab_axes:  # major to minor
    index = index * mesh.shape[a] + jax.lax.axis_index(a)
  return index * local_vocab


def gather_rows(w: jax.Array, layout: Layout) -> jax.Array:
  """[D / r, C] slice of the head -> [D, C]: all-gather over its row (FSDP) axes."""
  if not layout.row_axes:
    return w
  return jax.lax.all_gather(w, layout.row_axes, axis=0, tiled=True)


def reduce_rows(dw: jax.Array, layout: Layout, mesh) -> jax.Array:
  """[D, C] float32 d W summed over this device's tokens -> the sum over all tokens, in
  the head's row layout [D / r, C]: reduce-scatter over the row axes that split tokens, a
  local slice for those that do not (their devices hold equal sums), psum over the other
  token axes."""
  tokens = set(layout.token_axes)
  if layout.row_axes and all(a in tokens for a in layout.row_axes):
    dw = jax.lax.psum_scatter(dw, layout.row_axes, scatter_dimension=0, tiled=True)
  else:
    for a in layout.row_axes:  # major to minor
      size = dw.shape[0] // mesh.shape[a]
      if a in tokens:
        dw = jax.lax.psum_scatter(dw, a, scatter_dimension=0, tiled=True)
      else:
        dw = jax.lax.dynamic_slice_in_dim(dw, jax.lax.axis_index(a) * size, size, 0)
  rest = tuple(a for a in layout.token_axes if a not in layout.row_axes)
  return jax.lax.psum(dw, rest) if rest else dw


def reduce_tokens(x: jax.Array, layout: Layout) -> jax.Array:
  """Sum of a per-device quantity over the token axes (inside shard_map)."""
  return jax.lax.psum(x, layout.token_axes) if layout.token_axes else x


def sharded(fn, mesh: Optional[jax.sharding.Mesh], in_specs, out_specs, check_vma=False):
  """fn per device under shard_map, or fn itself when there is no mesh."""
  if mesh is None:
    return fn
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=check_vma)
