"""The pure parts of the kernel-NAT reference (image/reference.py): the nftables ruleset made
from a config and the ioctl structures that address the NICs; and natvm's own configuration has
no mode word to switch to it."""

import ctypes
import fcntl
import socket
import struct
from ipaddress import IPv4Address

import pytest

from appliance import config
from appliance.config import ApplianceConfig, ConfigError
from image import reference

SIOCGIFADDR = 0x8915


def test_natvm_has_no_mode_word_it_is_an_unknown_key_like_any_other(
    demo_config: ApplianceConfig,
) -> None:
    # The reference image has an /init of its own: natvm's kernel words never select it.
    words = config.parse_kernel_cmdline("quiet natvm.mode=kernel natvm.mtu=1400")
    with pytest.raises(ConfigError, match=r"natvm\.mode: unknown key"):
        config.apply_overrides(demo_config, words)


def _rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_the_ruleset_masquerades_forwards_and_hairpins_as_configured(
    demo_config: ApplianceConfig,
) -> None:
    rules = _rules(reference.ruleset(demo_config, "eth0", "eth1"))
    assert 'oifname "eth0" meta l4proto { tcp, udp } masquerade to :1024-65535' in rules
    assert 'oifname "eth0" masquerade' in rules
    assert "ip daddr 192.0.2.2 tcp dport 8080 dnat to 10.77.0.10:80" in rules
    assert "ip daddr 192.0.2.2 udp dport 5353 dnat to 10.77.0.10:53" in rules
    assert 'oifname "eth1" ip saddr 10.77.0.0/24 ct status dnat snat to 192.0.2.2' in rules
    assert 'iifname "eth1" oifname "eth0" accept' in rules
    assert "type filter hook forward priority filter; policy drop;" in rules
    assert not any("echo-request" in rule for rule in rules)  # the demo answers pings on the WAN


def test_the_ruleset_follows_overrides(demo_config: ApplianceConfig) -> None:
    overrides = {
        "natvm.ports": ["20000-29999"],
        "natvm.forward": ["tcp:8000-8002:10.77.0.10:80", "udp:9000-9001:10.77.0.11:9000"],
        "natvm.ping_on_wan": ["0"],
        "natvm.wan.ip": ["203.0.113.2/24"],
        "natvm.wan.gw": ["203.0.113.1"],
    }
    changed = config.apply_overrides(demo_config, overrides)
    rules = _rules(reference.ruleset(changed, "wan", "lan"))
    assert 'oifname "wan" meta l4proto { tcp, udp } masquerade to :20000-29999' in rules
    # A shifted range maps port by port; an unshifted one keeps the ports.
    shifted = "dnat to 10.77.0.10 : tcp dport map { 8000 : 80, 8001 : 81, 8002 : 82 }"
    assert f"ip daddr 203.0.113.2 tcp dport 8000-8002 {shifted}" in rules
    assert "ip daddr 203.0.113.2 udp dport 9000-9001 dnat to 10.77.0.11" in rules
    assert 'iifname "wan" icmp type echo-request drop' in rules
    assert not any("8080" in rule for rule in rules)  # the file's forwards were replaced


def test_sysctls_make_a_forwarding_router_without_redirects() -> None:
    settings = reference.sysctls("eth0", "eth1")
    assert settings["net/ipv4/ip_forward"] == "1"
    assert settings["net/ipv4/conf/eth1/send_redirects"] == "0"


def test_ifreq_address_has_the_kernels_own_layout() -> None:
    # Oracle: the kernel's answer to SIOCGIFADDR on lo is an ifreq holding 127.0.0.1.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        answer = fcntl.ioctl(sock, SIOCGIFADDR, struct.pack("16s24x", b"lo"))
    assert reference.ifreq_address("lo", IPv4Address("127.0.0.1")) == answer


def test_an_interface_name_too_long_for_an_ifreq_is_refused() -> None:
    with pytest.raises(reference.ReferenceError, match="does not fit"):
        reference.ifreq_address("a-very-long-name0", IPv4Address("10.0.0.1"))


class _Sockaddr(ctypes.Structure):
    _fields_ = (("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 14))


class _Rtentry(ctypes.Structure):
    """struct rtentry of <net/route.h>, laid out by ctypes as the C compiler would."""

    _fields_ = (
        ("rt_pad1", ctypes.c_ulong),
        ("rt_dst", _Sockaddr),
        ("rt_gateway", _Sockaddr),
        ("rt_genmask", _Sockaddr),
        ("rt_flags", ctypes.c_ushort),
        ("rt_pad2", ctypes.c_short),
        ("rt_pad3", ctypes.c_ulong),
        ("rt_pad4", ctypes.c_void_p),
        ("rt_metric", ctypes.c_short),
        ("rt_dev", ctypes.c_char_p),
        ("rt_mtu", ctypes.c_ulong),
        ("rt_window", ctypes.c_ulong),
        ("rt_irtt", ctypes.c_ushort),
    )


def test_rtentry_default_route_matches_the_c_layout() -> None:
    encoded = reference.rtentry_default_route(IPv4Address("192.0.2.1"))
    assert len(encoded) == ctypes.sizeof(_Rtentry)
    entry = _Rtentry.from_buffer_copy(encoded)
    assert entry.rt_gateway.family == socket.AF_INET
    assert bytes(entry.rt_gateway.data)[2:6] == IPv4Address("192.0.2.1").packed
    assert entry.rt_dst.family == socket.AF_INET and not any(bytes(entry.rt_dst.data))
    assert entry.rt_flags == 0x3  # RTF_UP | RTF_GATEWAY
    assert entry.rt_dev is None


def test_ready_line_is_the_appliances(demo_config: ApplianceConfig) -> None:
    line = reference.ready_line(demo_config, "eth0", "eth1", ("52:54:00:4e:41:01", "m2"))
    assert line.startswith("READY wan=eth0 192.0.2.2/24 mac=52:54:00:4e:41:01 lan=eth1 ")
