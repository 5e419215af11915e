"""The C library calls natvm makes that Python's os module lacks: mount(2), mlockall(2), reboot(2).

Bound with `_ctypes`, the C half of `ctypes`. `import ctypes` also runs its Python half (the C
types and their byte-order twins, some fifty classes), which took 70 ms in the guest's
`-X importtime`, for three calls that need none of it. What is left here is what
`ctypes.CDLL("libc.so.6", use_errno=True)` does for a function that returns an int.
"""

import _ctypes
import os
from typing import Final


class _CInt(_ctypes._SimpleCData):  # type: ignore[type-arg]  # C's int, as ctypes.c_int
    """A direct subclass of `_SimpleCData`: a call's result of this type comes back as an int."""

    _type_ = "i"


class _Function(_ctypes.CFuncPtr):
    """A C function that returns an int and saves errno for `last_error` (a CDLL's function)."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _Library:
    """What `_Function` looks a name up in: the `dlopen` handle, as `_handle`."""

    def __init__(self, name: str) -> None:
        self._handle = _ctypes.dlopen(name, os.RTLD_NOW)


_LIBC: Final = _Library("libc.so.6")


def _bound(name: str) -> _Function:
    return _Function((name, _LIBC))  # type: ignore[arg-type]  # typed for a CDLL: any `_handle` does


# Each returns 0, or -1 with the error in `last_error()`.
mount: Final = _bound("mount")  # (source, target, fstype, flags, data)
mlockall: Final = _bound("mlockall")  # (flags)
reboot: Final = _bound("reboot")  # (command)


def last_error() -> int:
    """errno as the last of these calls left it."""
    return _ctypes.get_errno()
