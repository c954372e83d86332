"""The brain-like model's encoder: tokens -> the active neurons and their activations,
on the sparse path (the ``[B, k]`` active set) and the dense one (all ``[B, N]``), and
the fixed random selection of the ``selection="random"`` ablation. The model and its
notation are in ``brainlike.py``.

    z    = b_e + sum_t E[x[:, t]] * P[t]                          [B, N]
    idx  = top_k(z, k)                                            [B, k]
    a    = sigmoid(z[idx])                                        [B, k]
"""

from __future__ import annotations

from typing import NamedTuple

from .. import layers as L
from ..backends import device_of, get_namespace


class Encoded(NamedTuple):
    """What the encoder hands the rest of the model (M neurons: k on the sparse path,
    N on the dense one)."""
    a: object          # [B, M] activations sigmoid(z); zero off the top-k on the dense path
    z: object          # [B, M] their pre-activations: z[idx] (sparse), z (dense)
    U_rows: object     # [B, k, D] the active neurons' rows of U (sparse), U as [1, N, D] (dense)
    idx: object        # [B, k] the active neurons (sparse), None (dense)
    selected: object   # None (sparse), [B, N] 0/1 the active neurons (dense)


class SparseEncoderCache(NamedTuple):
    x: object          # [B, T] tokens
    idx: object        # [B, k]
    a: object          # [B, k] sigmoid(z[idx]) (its backward reads the output)
    U_lookup: tuple    # the embedding cache of the U rows


class DenseEncoderCache(NamedTuple):
    E_rows: object     # [B, T, N] the tokens' rows of E
    E_lookup: tuple    # their embedding cache
    s: object          # [B, N] sigmoid(z) for every neuron
    selected: object   # [B, N] 0/1
    P_used: object     # [T, N] the positions' rows of P
    n_positions: int   # P's rows (the context the model was built for)


def encoder_sparse_forward(p, x, cfg, ops):
    """x ``[B, T]`` -> (Encoded, cache)."""
    xp = get_namespace(p["E"])
    z = p["b_e"] + ops.gather_weighted_sum(p["E"], x, p["P"])        # [B, N]
    idx = select(z, x, cfg, ops)                                     # [B, k]
    z_active = xp.take_along_axis(z, idx, axis=1)                    # [B, k]
    a, ca = L.sigmoid_forward(z_active)                              # [B, k]
    U_rows, cu = L.embedding_forward(p["U"], idx, ops)               # [B, k, D]
    return Encoded(a, z_active, U_rows, idx, None), SparseEncoderCache(x, idx, ca, cu)


def encoder_sparse_backward(da, dz_steps, dU_rows, p, cache, grads, ops):
    """da ``[B, k]`` (through a = sigmoid(z[idx])), dz_steps ``[B, k]`` or None (what the
    residual activation updates add to z[idx] directly), dU_rows ``[B, k, D]``."""
    xp = get_namespace(da)
    x, idx = cache.x, cache.idx
    dz = L.sigmoid_backward(da, cache.a)                             # [B, k]
    if dz_steps is not None:
        dz = dz + dz_steps
    dE, dP = ops.gather_weighted_sum_backward(dz, idx, p["E"], x, p["P"])  # [V, N], [T, N]
    n = dz.shape[0] * dz.shape[1]
    db_e = ops.scatter_add_rows(xp.reshape(idx, (n,)), xp.reshape(dz, (n, 1)),
                                p["b_e"].shape[0])[:, 0]             # [N]
    grads.update({"E": dE, "P": dP, "b_e": db_e,
                  "U": L.embedding_backward(dU_rows, cache.U_lookup, ops)})


def encoder_dense_forward(p, x, cfg, ops):
    """x ``[B, T]`` -> (Encoded, cache): every neuron's z, activations zero off the top-k."""
    xp = get_namespace(p["E"])
    T = x.shape[1]
    E_rows, ce = L.embedding_forward(p["E"], x, ops)                 # [B, T, N]
    P_used, n_positions = L.first_rows_forward(p["P"], T)           # [T, N]
    z = p["b_e"] + xp.sum(E_rows * P_used, axis=1)                   # [B, N]
    idx = select(z, x, cfg, ops)                                     # [B, k]
    selected = per_sample_scatter(xp.ones(idx.shape, dtype=z.dtype, device=device_of(z)),
                                  idx, cfg.n_neurons, ops)           # [B, N] 0/1
    s, cs = L.sigmoid_forward(z)
    a = s * selected                                                 # [B, N]
    return (Encoded(a, z, p["U"][None, :, :], None, selected),
            DenseEncoderCache(E_rows, ce, cs, selected, P_used, n_positions))


def encoder_dense_backward(da, dz_steps, dU_rows, p, cache, grads, ops):
    """As ``encoder_sparse_backward``, over all N neurons: ``[B, N]``, ``[B, N, D]``."""
    xp = get_namespace(da)
    dz = L.sigmoid_backward(da * cache.selected, cache.s)            # [B, N]
    if dz_steps is not None:
        dz = dz + dz_steps                                           # zero off the top-k
    dE = L.embedding_backward(dz[:, None, :] * cache.P_used, cache.E_lookup, ops)   # [V, N]
    dP = L.first_rows_backward(xp.sum(dz[:, None, :] * cache.E_rows, axis=0), cache.n_positions)
    grads.update({"E": dE, "P": dP, "b_e": xp.sum(dz, axis=0),
                  "U": xp.sum(dU_rows, axis=0)})


def select(z, x, cfg, ops):
    """The active neurons idx ``[B, k]``: the top-k of z, or with ``selection="random"``
    the top-k of ``random_scores(x)``. Either way no gradient flows through the choice
    itself (top-k is piecewise constant); z's gradient comes through a = sigmoid(z[idx])."""
    scores = z if cfg.selection == "learned" else random_scores(x, cfg.n_neurons)
    return ops.topk(scores, cfg.k_active)


# a prime below 2^31: products of two residues fit in int64
_HASH_PRIME = 2 ** 31 - 1


def random_scores(x, N):
    """A fixed pseudo-random score per (window, neuron): x ``[B, T']`` -> ``[B, N]``
    float64, distinct within a row. Its top-k is a set of k neurons that depends only on
    the window's bytes (the same window always gets the same set, in training and in
    evaluation, on every backend), looks uniformly random over the N neurons, and carries
    no similarity between windows: two windows that differ in one byte get unrelated sets
    (about k*k/N neurons shared, as for independent draws).

    The hash is integer arithmetic on the device (no host read): a polynomial hash of the
    window modulo a prime, combined with each neuron's id and mixed by three rounds of
    squaring modulo the same prime; ``score = hash * N + n`` breaks ties by neuron id and
    stays exact in float64 for N < 2^22."""
    xp = get_namespace(x)
    device = device_of(x)
    q = _HASH_PRIME
    T = x.shape[1]
    powers = xp.asarray([pow(131, t + 1, q) for t in range(T)], dtype=xp.int64, device=device)
    window = xp.sum(xp.astype(x, xp.int64) * powers, axis=1) % q                # [B]
    n = xp.arange(N, dtype=xp.int64, device=device)                             # [N]
    h = (window[:, None] * 48271 + (n[None, :] + 1) * 69621) % q                # [B, N]
    for c in (11, 4099, 65537):
        h = (h * h + c) % q
    return xp.astype(h * N + n, xp.float64)


def per_sample_scatter(values, idx, N, ops):
    """``out[b, idx[b, j]] = values[b, j]``, zero elsewhere: values, idx ``[B, k]`` ->
    ``[B, N]`` (the ids of a row are distinct, as top-k's are)."""
    xp = get_namespace(values)
    B, k = idx.shape
    flat = L.per_sample_flat_ids(idx, N)                            # [B, k]
    out = ops.scatter_add_rows(xp.reshape(flat, (-1,)), xp.reshape(values, (B * k, 1)), B * N)
    return xp.reshape(out, (B, N))
