"""What the engine and the shell say of frames: the side of the appliance a frame is on, and
what a virtio_net_hdr says of it."""

from enum import StrEnum
from typing import Final


class Side(StrEnum):
    """The side of the appliance a frame is received on or sent to."""

    WAN = "wan"
    LAN = "lan"


# The members again, as module constants for per-packet code: in Python 3.11, `Side.LAN` is a
# descriptor call on the enum class (about 100 ns, more than 1% of a fast-path packet each time).
WAN, LAN = Side.WAN, Side.LAN

Output = list[tuple[Side, bytes]]


class Offload:
    """What a virtio_net_hdr says of a frame, as the engine needs it (the shell encodes it).

    `needs_csum`: the TCP/UDP checksum field holds only the (non-complemented) pseudo-header sum;
    the kernel finishes it on transmit. `gso_size`: a TCP aggregate (GRO/TSO) that the kernel cuts
    into segments of that many payload bytes on transmit (0: a single frame). `ecn`: the
    aggregate's segments carry CWR on the first one only (gso_type ECN). A received frame whose
    checksum is partial leaves, translated, with the same offload, so the kernel completes it.
    """

    __slots__ = ("ecn", "gso_size", "needs_csum")

    def __init__(self, needs_csum: bool = False, gso_size: int = 0, ecn: bool = False) -> None:
        self.needs_csum: Final = needs_csum
        self.gso_size: Final = gso_size
        self.ecn: Final = ecn

    # A value: the tests compare the offload a frame leaves with to the one it came in with,
    # and equal offloads hash alike.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Offload):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:  # what a failed comparison in a test shows
        return "Offload(needs_csum={}, gso_size={}, ecn={})".format(*self._fields())

    def _fields(self) -> tuple[bool, int, bool]:
        return self.needs_csum, self.gso_size, self.ecn


OffloadOutput = list[tuple[Side, bytes, Offload | None]]
