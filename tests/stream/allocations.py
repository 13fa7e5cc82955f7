"""Count NumPy array data allocations: a counting memory handler installed through NumPy's C API.

``with counting() as n: ...`` counts every array buffer NumPy allocates on this thread inside the
block (``n.count`` after it): new arrays, copies, temporaries of expressions, and the arrays ONNX
Runtime's Python binding returns. Views, NumPy scalars and Python objects allocate no array buffer and
are not counted. Why a handler and not ``tracemalloc``: a tracemalloc snapshot holds live blocks, so
the temporaries a block frees again leave no trace in a diff; the handler sees each allocation.

The handler is NumPy's own extension point (``PyDataMem_SetHandler``, NEP 49, NumPy >= 1.22): a struct
of malloc/calloc/realloc/free functions. This one forwards to the C library and counts.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.realloc.restype = ctypes.c_void_p
_libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]

_MALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_CALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
_REALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class _Allocator(ctypes.Structure):  # PyDataMemAllocator (numpy/ndarraytypes.h)
    _fields_ = [("ctx", ctypes.c_void_p), ("malloc", _MALLOC), ("calloc", _CALLOC), ("realloc", _REALLOC),
                ("free", _FREE)]


class _Handler(ctypes.Structure):  # PyDataMem_Handler, version 1
    _fields_ = [("name", ctypes.c_char * 127), ("version", ctypes.c_uint8), ("allocator", _Allocator)]


@dataclass
class Count:
    count: int = 0


_active: list[Count] = []


def _note() -> None:
    for c in _active:
        c.count += 1


@_MALLOC
def _malloc(ctx, size):
    _note()
    return _libc.malloc(max(size, 1))


@_CALLOC
def _calloc(ctx, nelem, elsize):
    _note()
    return _libc.calloc(max(nelem, 1), max(elsize, 1))


@_REALLOC
def _realloc(ctx, ptr, size):
    _note()
    return _libc.realloc(ptr, max(size, 1))


@_FREE
def _free(ctx, ptr, size):
    _libc.free(ptr)


_handler = _Handler(b"counting_allocator", 1, _Allocator(None, _malloc, _calloc, _realloc, _free))


def _set_handler_function():
    """NumPy's ``PyDataMem_SetHandler`` from its C API table (the slot is read from NumPy's own header)."""
    header = Path(np.get_include()) / "numpy" / "__multiarray_api.h"
    slot = int(re.search(r"#define PyDataMem_SetHandler \\\s*\([^\n]*\\\s*PyArray_API\[(\d+)\]",
                         header.read_text()).group(1))
    from numpy._core import _multiarray_umath

    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    table = ctypes.cast(get_pointer(_multiarray_umath._ARRAY_API, None), ctypes.POINTER(ctypes.c_void_p))
    return ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(table[slot])


_set_handler = _set_handler_function()
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_capsule_name = ctypes.create_string_buffer(b"mem_handler")  # the capsule keeps a pointer to its name
_capsule = _new_capsule(ctypes.addressof(_handler), ctypes.addressof(_capsule_name), None)


@contextlib.contextmanager
def counting() -> Iterator[Count]:
    """Count NumPy array data allocations made on this thread inside the ``with`` block."""
    c = Count()
    old = _set_handler(_capsule)
    _active.append(c)
    try:
        yield c
    finally:
        _active.remove(c)
        _set_handler(old)
