"""The C library calls bound without ctypes (appliance/libc.py): results and errno come back."""

import errno
import os
import subprocess

from appliance import libc


def test_a_failed_mount_returns_minus_one_and_keeps_errno(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "missing")
    assert libc.mount(b"none", missing.encode(), b"tmpfs", 0, None) == -1
    assert libc.last_error() == errno.ENOENT


def test_mlockall_refuses_unknown_flags_and_says_why() -> None:
    assert libc.mlockall(1 << 12) == -1
    assert libc.last_error() == errno.EINVAL


def test_a_successful_mount_returns_zero(tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(tmp_path, "mounted")
    os.mkdir(target)
    assert libc.mount(b"natvm-test", target.encode(), b"tmpfs", 0, None) == 0
    try:
        assert os.path.ismount(target)
    finally:
        subprocess.run(["umount", target], check=True)
