"""Time the sparse hot-path operations: reference vs Numba kernels vs ``np.add.at``.

    python bench/kernels.py            # design sizes, numpy backend (CPU kernels)
    python bench/kernels.py --quick    # smaller sizes, fewer repeats
    BRAINLIKE_BACKEND=cupy python bench/kernels.py   # CUDA kernels, with bandwidth

Every implementation of an operation runs in the same process (one library, NumPy) on
the same inputs, warm-up calls first (compilation), then the median of several timed
repeats, the implementations taking turns (``measure.take_turns``). Results go to
bench/results/kernels.json (kernels-cupy.json for cupy) and a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

import measure
from brainlike_np.backends import get_backend
from brainlike_np.backends.reference import ReferenceOps
from brainlike_np.data import random_batch

DESIGN = dict(B=32, N=4096, k=128, D=256, T=128, V=256)
QUICK = dict(B=8, N=1024, k=32, D=64, T=32, V=64)


def make_cases(s, rng, dtype):
    """(case name, op name, host args, add.at stand-in or None, bytes a kernel must move)."""
    B, N, k, D, T, V = (s[key] for key in ("B", "N", "k", "D", "T", "V"))
    item = np.dtype(dtype).itemsize

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    tokens, _ = random_batch(B, T, V)                                    # [B, T]
    neurons = rng.integers(0, B * N, B * k)                              # [B*k] into B*N rows
    z = normal(B, N)
    idx = np.argsort(-z, axis=1, kind="stable")[:, :k]                   # [B, k]
    E, P = normal(V, N), normal(T, N)                                    # table, weights
    dz = normal(B, k)
    return [
        ("gather embedding", "gather_rows", (normal(V, D), tokens), None,
         2 * B * T * D * item),
        ("gather neurons", "gather_rows", (normal(B * N, D), neurons), None,
         2 * B * k * D * item),
        ("scatter embedding", "scatter_add_rows", (tokens.reshape(-1), normal(B * T, D), V),
         add_at_rows, (B * T * D + V * D) * item),
        ("scatter neurons", "scatter_add_rows", (neurons, normal(B * k, D), B * N),
         add_at_rows, (B * k * D + B * N * D) * item),
        ("topk", "topk", (z, k), None, B * N * item + B * k * 8),
        ("weighted sum (encoder)", "gather_weighted_sum", (E, tokens, P), None,
         (2 * B * T * N + B * N) * item),
        ("weighted sum backward (encoder)", "gather_weighted_sum_backward",
         (dz, idx, E, tokens, P), add_at_weighted_sum, (4 * B * T * k + V * N + T * N) * item),
    ]


def add_at_rows(ids, rows, n_rows):
    """``np.add.at`` doing what scatter_add_rows does."""
    out = np.zeros((n_rows, rows.shape[1]), dtype=rows.dtype)
    np.add.at(out, ids, rows)
    return out


def add_at_weighted_sum(dout, cols, table, ids, weights):
    """``np.add.at`` doing what gather_weighted_sum_backward does, on the B*T*k touched
    entries."""
    T = ids.shape[1]
    r, t = ids[:, :, None], np.arange(T)[None, :, None]                 # [B, T, 1]
    f, g = cols[:, None, :], dout[:, None, :]                            # [B, 1, k]
    dtable, dweights = np.zeros_like(table), np.zeros_like(weights)
    np.add.at(dtable, (r, f), g * weights[t, f])                         # [B, T, k] terms
    np.add.at(dweights, (t, f), g * table[r, f])
    return dtable, dweights


def implementations(backend):
    """Name -> ops object for every implementation timed on this backend."""
    if backend.name == "cupy":
        from brainlike_np.backends.numba_cuda import NumbaCudaOps
        return {"reference": ReferenceOps(backend.xp),
                "numba-cuda": NumbaCudaOps(),
                "numba-cuda det": NumbaCudaOps(deterministic=True)}
    from brainlike_np.backends.numba_cpu import NumbaCpuOps
    return {"reference": ReferenceOps(backend.xp),
            "numba": NumbaCpuOps(),
            "numba parallel": NumbaCpuOps(parallel_min_work=0)}


def run(backend, sizes, dtype, repeats, between=None):
    rng = np.random.default_rng(0)
    impls = implementations(backend)
    rows = []
    for case, op, host_args, add_at, nbytes in make_cases(sizes, rng, dtype):
        args = tuple(backend.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args)
        calls = {name: (lambda o=ops: getattr(o, op)(*args)) for name, ops in impls.items()}
        if add_at is not None and backend.name == "numpy":   # after the reference
            calls = {"np.add.at": lambda: add_at(*args), **calls}
            calls = {"reference": calls.pop("reference"), **calls}
        runs = measure.take_turns(calls, repeats, backend.synchronize, warmup=2, between=between)
        times = {name: statistics.median(t) for name, t in runs.items()}
        rows.append(dict(case=case, op=op, seconds=times, bytes=nbytes,
                         gb_per_s={n: nbytes / t / 1e9 for n, t in times.items()}))
    return rows


def markdown(rows, names, fast):
    """A table of milliseconds per implementation and the speed-ups of ``fast``."""
    head = ["case"] + [f"{n} ms" for n in names] + [f"{n} / {fast}" for n in names if n != fast]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["seconds"]
        ms = [f"{t[n] * 1e3:.3f}" if n in t else "-" for n in names]
        ratio = [f"{t[n] / t[fast]:.1f}x" if n in t else "-" for n in names if n != fast]
        lines.append("| " + " | ".join([r["case"]] + ms + ratio) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per median")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--interleave-matmul", action="store_true",
                        help="run an untimed 512x512 matmul before every timed call, as in "
                             "training, where BLAS threads run between the kernels")
    measure.add_blas_argument(parser)
    args = parser.parse_args(argv)
    measure.use_native_blas_kernel(args.forced_blas_kernel)
    load_at_start = measure.machine_load()

    backend = get_backend()
    sizes = QUICK if args.quick else DESIGN
    repeats = args.repeats or (3 if args.quick else 15)
    between = _matmul(backend, args.dtype) if args.interleave_matmul else None
    rows = run(backend, sizes, args.dtype, repeats, between)

    fast = "numba-cuda" if backend.name == "cupy" else "numba"
    names = list(dict.fromkeys(name for r in rows for name in r["seconds"]))
    print(markdown(rows, names, fast))
    if backend.name == "cupy":
        print("\nachieved bandwidth (GB/s, bytes a kernel must move / time):")
        for r in rows:
            print(f"  {r['case']}: " + ", ".join(f"{n} {g:.0f}" for n, g in r["gb_per_s"].items()))

    report = dict(backend=backend.name, dtype=args.dtype, sizes=sizes, repeats=repeats,
                  interleave_matmul=args.interleave_matmul, machine=measure.environment(),
                  load={"start": load_at_start, "end": measure.machine_load()},
                  command=measure.command_line(), results=rows)
    default = "kernels.json" if backend.name == "numpy" else f"kernels-{backend.name}.json"
    out = args.out or measure.RESULTS / default
    measure.write_json(out, report)
    print(f"\nwrote {out}")


def _matmul(backend, dtype):
    """A 512x512 matmul on the backend, for ``--interleave-matmul``."""
    a = backend.asarray(np.random.default_rng(1).standard_normal((512, 512)).astype(dtype))
    return lambda: a @ a


if __name__ == "__main__":
    main()
