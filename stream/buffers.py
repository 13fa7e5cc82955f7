"""Preallocated buffers for the audio path: a FIFO of sample columns and a pool of scratch arrays.

Why: a stream runs hundreds of blocks a second; a block that creates arrays (concatenations, copies,
temporaries) pays the allocator and the page faults every time, and a live callback pays them at the
worst moment. These buffers are sized by the first blocks and then reused, so a steady stream
allocates nothing; they grow (by doubling) only when a block is larger than any before it.
"""

from __future__ import annotations

import math

import numpy as np


class Fifo:
    """A queue of sample columns, float32 ``[rows, length]``, in two preallocated buffers.

    ``append`` writes after the queued samples; ``head(n)`` is a view of the oldest ``n``; ``drop(n)``
    removes them by copying what is left to the front of the other buffer and swapping the two (a copy
    within one buffer would overlap itself, which NumPy resolves with a temporary copy). A view from
    ``head`` stays valid until the second ``drop`` after it.
    """

    def __init__(self, rows: int, prefill: int = 0, capacity: int = 0) -> None:
        """``prefill`` zeros are queued from the start (a delay line of that length)."""
        cap = max(prefill + capacity, 1)
        self._bufs = [np.zeros((rows, cap), np.float32), np.zeros((rows, cap), np.float32)]
        self._cur = 0
        self.length = prefill

    @property
    def rows(self) -> int:
        return self._bufs[0].shape[0]

    def __len__(self) -> int:
        return self.length

    def tail(self, n: int) -> np.ndarray:
        """A writable view [rows, n] of the ``n`` columns after the queued ones; ``commit(n)`` queues them."""
        need = self.length + n
        if need > self._bufs[0].shape[1]:
            cap = max(need, 2 * self._bufs[0].shape[1])
            grown = [np.zeros((self.rows, cap), np.float32), np.zeros((self.rows, cap), np.float32)]
            grown[0][:, : self.length] = self._bufs[self._cur][:, : self.length]
            self._bufs, self._cur = grown, 0
        return self._bufs[self._cur][:, self.length : need]

    def commit(self, n: int) -> None:
        self.length += n

    def append(self, x: np.ndarray) -> None:
        """Queue ``x`` [rows, n] (cast to float32)."""
        n = x.shape[1]
        np.copyto(self.tail(n), x, casting="same_kind")
        self.length += n

    def head(self, n: int) -> np.ndarray:
        """A view [rows, n] of the oldest ``n`` queued columns (n <= length)."""
        return self._bufs[self._cur][:, :n]

    def drop(self, n: int) -> None:
        """Remove the oldest ``n`` columns."""
        if n <= 0:
            return
        if n > self.length:
            raise ValueError(f"cannot drop {n} columns from a queue of {self.length}")
        left = self.length - n
        cur, other = self._bufs[self._cur], self._bufs[1 - self._cur]
        if left:
            other[:, :left] = cur[:, n : self.length]
        self._cur, self.length = 1 - self._cur, left

    def copy(self) -> Fifo:
        """An independent FIFO with the same queued samples."""
        new = Fifo(self.rows, capacity=self.length)
        new.append(self.head(self.length))
        return new


class Scratch:
    """Named scratch arrays: ``scratch(name, shape, dtype)`` is a C-contiguous array of that shape, a view
    of a flat buffer kept under ``name`` and grown (doubling) only when too small. Its content is
    whatever the last user left; two arrays in use at once need two names."""

    # Views are remembered per (name, shape, dtype), so a steady stream asks for the same ones again; a
    # stream of ever-changing block sizes would add one per size, so past this many they are forgotten.
    MAX_VIEWS = 512

    def __init__(self) -> None:
        self._flat: dict[str, np.ndarray] = {}
        self._views: dict[tuple, np.ndarray] = {}
        self._ranges: dict[np.dtype, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        key = (name, shape, dtype)
        view = self._views.get(key)
        if view is not None:
            return view
        size = math.prod(shape)
        buf = self._flat.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 2 * buf.size if buf is not None else 1), dtype)
            self._flat[name] = buf
            self._views = {k: v for k, v in self._views.items() if k[0] != name}
        if len(self._views) >= self.MAX_VIEWS:
            self._views.clear()
        view = self._views[key] = buf[:size].reshape(shape)
        return view

    def arange(self, n: int, dtype: type = np.int64) -> np.ndarray:
        """[n] 0..n-1 of ``dtype`` (read-only; a view of a table grown on demand)."""
        table = self._ranges.get(np.dtype(dtype))
        if table is None or table.size < n:
            table = np.arange(max(n, 2 * table.size if table is not None else 1), dtype=dtype)
            table.flags.writeable = False
            self._ranges[np.dtype(dtype)] = table
        return table[:n]

    def scalar(self, name: str, value: float | int, dtype: type = np.float32) -> np.ndarray:
        """A 0-d array holding ``value`` cast to ``dtype``: a ufunc operand that allocates nothing (NumPy
        converts a Python or NumPy scalar operand to a new 0-d array at every call)."""
        a = self(name, (), dtype)
        a[()] = value
        return a
