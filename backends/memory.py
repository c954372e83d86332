"""Memory accounting: current and peak bytes of array memory, with a reset.

Host backends (numpy, array-api-strict) count through ``tracemalloc``: NumPy reports
every array buffer it allocates to it, so the peak is exact.

CuPy has two modes, chosen when the tracker is made (``exact_peak``):

- sampled (the default, what ``backend.memory`` uses): nothing runs per allocation.
  ``current_bytes()`` is the pool's ``used_bytes()`` (every live array on the device)
  and ``peak_bytes()`` the largest ``total_bytes()`` seen: the pool keeps freed blocks
  for reuse, so what it holds is at least the peak of live arrays since
  ``reset_peak()`` (which hands the pool's unused blocks back to the device first),
  plus the pool's rounding, unless CuPy handed blocks back in between (it does so
  when an allocation would otherwise fail). Unlike the other trackers it counts the arrays made before
  the reset too (the parameters, say). Two calls into CuPy per read, none per allocation.
- exact (``exact_peak=True``, for benchmarks): a memory hook on the pool sees every
  allocation and free (about four Python calls each) and
  counts the blocks allocated since it was installed, so ``current_bytes()`` never
  goes negative and the peak is that of the arrays made since the reset.

PyTorch: on CUDA, its caching allocator's own statistics (``memory_allocated``, and
``max_memory_allocated`` since ``reset_peak_memory_stats``), exact like CuPy's hook and,
like the pool, counting the arrays made before the reset. On the CPU (and Apple's MPS)
nothing counts its arrays: tracemalloc never sees PyTorch's allocator. There the tracker
reads the process's resident memory (Linux's VmRSS, and VmHWM reset through
``/proc/self/clear_refs``), everything the process holds, and says so in its ``label``;
where that cannot be reset, the peak is the process's since it started.

Call ``stop()`` when done (in a ``finally``): it removes the hook / stops tracemalloc.

The host tracker and CuPy's exact one start counting at the first ``reset_peak()``
(tracemalloc slows Python's allocator, the hook every allocation: neither is switched
on behind a user's back).
"""

from __future__ import annotations

import os
import tracemalloc


class MemoryTracker:
    """``reset_peak()``, then ``current_bytes()`` / ``peak_bytes()``; ``mode`` says how it
    counts: "tracemalloc" (host), "pool" (CuPy, sampled), "hook" (CuPy, exact),
    "torch_cuda" (PyTorch's CUDA allocator), "live arrays" (JAX, sampled), "resident" (the
    process's resident memory) or "unknown" (nothing counts: zeros); ``label`` and
    :meth:`describe_peak` say what the figures are, for the user."""

    LABELS = {"resident": "resident memory of the process", "unknown": "memory"}

    def __init__(self, mode: str, reset, current, peak, stop):
        self.mode = mode
        self.label = self.LABELS.get(mode, "array memory")
        self._reset, self._current, self._peak, self._stop = reset, current, peak, stop
        self._at_stop = None          # (current, peak) when stopped, until counting restarts

    def reset_peak(self) -> None:
        """Start counting (if not yet) and set the peak to the current usage."""
        self._at_stop = None
        self._reset()

    def current_bytes(self) -> int:
        return int(self._current()) if self._at_stop is None else self._at_stop[0]

    def peak_bytes(self) -> int:
        return int(self._peak()) if self._at_stop is None else self._at_stop[1]

    def describe_peak(self, peak: int) -> str:
        """``peak`` (from :meth:`peak_bytes`) in words, saying what was counted."""
        if self.mode == "unknown":
            return "peak memory unknown (nothing here counts this backend's arrays)"
        return f"peak {self.label} {peak / 2**20:.1f} MiB"

    def stop(self) -> None:
        """Stop counting (removes the hook, frees tracemalloc's own bookkeeping); the
        figures at this moment stay readable."""
        if self._at_stop is None:
            self._at_stop = (self.current_bytes(), self.peak_bytes())
        self._stop()

    # ---- constructors ------------------------------------------------------------
    @classmethod
    def for_host(cls) -> "MemoryTracker":
        def reset():
            if not tracemalloc.is_tracing():
                tracemalloc.start()
            tracemalloc.reset_peak()

        def current():
            return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0

        def peak():
            return tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0

        return cls("tracemalloc", reset, current, peak, tracemalloc.stop)

    @classmethod
    def for_torch_cuda(cls, torch, device) -> "MemoryTracker":
        def reset():
            torch.cuda.reset_peak_memory_stats(device)

        return cls("torch_cuda", reset, lambda: torch.cuda.memory_allocated(device),
                   lambda: torch.cuda.max_memory_allocated(device), lambda: None)

    @classmethod
    def for_resident(cls) -> "MemoryTracker":
        """The process's resident memory: VmRSS, and VmHWM as the peak (reset through
        ``/proc/self/clear_refs``); mode "unknown" (zeros) where Linux's ``/proc`` is not
        there."""
        if not os.path.exists("/proc/self/status"):
            return cls("unknown", lambda: None, lambda: 0, lambda: 0, lambda: None)

        def reset():
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")                 # VmHWM := VmRSS
            except OSError:
                pass                             # the peak is then the process's so far

        return cls("resident", reset, lambda: _proc_status_bytes("VmRSS"),
                   lambda: _proc_status_bytes("VmHWM"), lambda: None)

    @classmethod
    def for_cupy(cls, cupy, exact_peak: bool = False) -> "MemoryTracker":
        return cls._cupy_hooked(cupy) if exact_peak else cls._cupy_sampled(cupy)

    @classmethod
    def _cupy_sampled(cls, cupy) -> "MemoryTracker":
        pool = cupy.get_default_memory_pool()
        peak = 0

        def reset():
            nonlocal peak
            pool.free_all_blocks()           # the pool's footprint = its live arrays
            peak = pool.used_bytes()

        def sample_peak():
            nonlocal peak
            peak = max(peak, pool.total_bytes())
            return peak

        return cls("pool", reset, pool.used_bytes, sample_peak, lambda: None)

    @classmethod
    def _cupy_hooked(cls, cupy) -> "MemoryTracker":
        hook = _make_cupy_hook(cupy)

        def reset():
            if not hook.installed:
                hook.__enter__()
                hook.installed = True
            hook.peak = hook.current

        def stop():
            if hook.installed:
                hook.__exit__(None, None, None)
                hook.installed = False

        return cls("hook", reset, lambda: hook.current, lambda: hook.peak, stop)

    @classmethod
    def for_jax(cls, jax, device) -> "MemoryTracker":
        """The bytes of JAX's live arrays on ``device``, sampled whenever either figure is
        read (XLA's buffers are not Python allocations: tracemalloc does not see them)."""
        peak = 0

        def current():
            nonlocal peak
            live = sum(a.nbytes for a in jax.live_arrays() if device in a.devices())
            peak = max(peak, live)
            return live

        def reset():
            nonlocal peak
            peak = 0
            current()

        def sample_peak():
            current()
            return peak

        return cls("live arrays", reset, current, sample_peak, lambda: None)


def _proc_status_bytes(field: str) -> int:
    """``field`` (VmRSS, VmHWM) of ``/proc/self/status`` in bytes; 0 where it is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _make_cupy_hook(cupy):
    """A CuPy MemoryHook that keeps the bytes held by the pool allocations made since it
    was installed.

    CuPy keeps a thread's hooks by name and refuses a second hook of the same name, so
    each hook has its own (two backends in one thread, e.g. two runs in one process).
    Frees of blocks allocated before the hook was installed (the initial parameters,
    say) are not subtracted: they were never added.
    """
    class PeakHook(cupy.cuda.memory_hook.MemoryHook):
        def __init__(self):
            self.name = f"BrainlikePeakHook-{id(self):x}"
            self.current = 0
            self.peak = 0
            self.installed = False
            self._sizes = {}          # pointer -> bytes, of the blocks allocated since install

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self._sizes[mem_ptr] = mem_size
            self.current += mem_size
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, device_id, mem_size, mem_ptr, pmem_id):
            self.current -= self._sizes.pop(mem_ptr, 0)

    return PeakHook()
