"""appliance/linux.py: the struct ifreq it packs is the kernel's."""

import struct

import pytest

from appliance import linux

IFF_LOOPBACK = 0x8


def test_ifreq_is_the_kernels_struct_ifreq() -> None:
    # Oracle: the kernel answers SIOCGIFFLAGS on lo in the same struct, with lo's flags.
    request = linux.ifreq("lo")
    answer = linux.ioctl(linux.SIOCGIFFLAGS, request)
    assert len(request) == len(answer) == 40
    assert answer[: linux.IFNAMSIZ] == request[: linux.IFNAMSIZ]
    assert struct.unpack_from("H", answer, linux.IFNAMSIZ)[0] & IFF_LOOPBACK


def test_a_name_too_long_for_an_ifreq_is_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        linux.ifreq("a-very-long-name0")
