"""The appliance's own addresses, and the address tests of the per-frame checks: on packed
4-byte addresses as frames carry them, with no `ipaddress` object built per frame."""

from ipaddress import IPv4Network
from typing import NamedTuple

from appliance.config import ApplianceConfig


class Subnet:
    """An IPv4 network, as integers: membership and host tests without building objects."""

    __slots__ = ("mask", "network", "not_hosts")

    def __init__(self, network: IPv4Network) -> None:
        self.network = int(network.network_address)
        self.mask = int(network.netmask)
        # A /31 (RFC 3021) and a /32 have no network or broadcast address.
        edges = (self.network, int(network.broadcast_address))
        self.not_hosts = edges if network.prefixlen <= 30 else ()

    def __contains__(self, addr: bytes) -> bool:
        return int.from_bytes(addr, "big") & self.mask == self.network

    def is_host(self, addr: bytes) -> bool:
        value = int.from_bytes(addr, "big")
        return value & self.mask == self.network and value not in self.not_hosts


def is_special(addr: bytes) -> bool:
    """Addresses that are never a unicast host: this-network, loopback, multicast, class E."""
    first = addr[0]
    return first == 0 or first == 127 or first >= 224


class Addresses(NamedTuple):
    """The appliance's own addresses and the networks on its sides, from the configuration."""

    wan_ip: bytes
    lan_ip: bytes
    gateway: bytes | None
    wan_net: Subnet
    lan_net: Subnet

    @classmethod
    def of(cls, config: ApplianceConfig) -> "Addresses":
        gateway = config.wan.gateway
        return cls(
            config.wan.address.ip.packed,
            config.lan.address.ip.packed,
            None if gateway is None else gateway.packed,
            Subnet(config.wan.address.network),
            Subnet(config.lan.address.network),
        )
