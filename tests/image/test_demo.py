"""`invoke run`'s options and the demo hosts' addresses, taken from ops-config.json."""

from ipaddress import IPv4Interface
from pathlib import Path

import pytest

from appliance.config import ApplianceConfig, load_config
from image import demo
from image.errors import ImageError
from tests.support import CONFIG


@pytest.fixture
def shipped() -> ApplianceConfig:
    return load_config(CONFIG)


def test_the_shipped_config_gives_the_demo_its_addresses(shipped: ApplianceConfig) -> None:
    hosts = demo.addresses(shipped)
    assert (str(hosts.lan_host), str(hosts.wan_host)) == ("10.77.0.10/24", "192.0.2.1/24")
    assert (str(hosts.appliance_lan), str(hosts.wan_network)) == ("10.77.0.1", "192.0.2.0/24")


def test_hosts_follow_the_subnets(shipped: ApplianceConfig) -> None:
    wan = shipped.wan._replace(address=IPv4Interface("100.64.0.1/29"), gateway=None)
    lan = shipped.lan._replace(address=IPv4Interface("172.16.0.10/28"))
    hosts = demo.addresses(shipped._replace(wan=wan, lan=lan))
    assert str(hosts.wan_host) == "100.64.0.2/29"  # no gateway: the first address not the NAT's
    assert str(hosts.lan_host) == "172.16.0.1/28"  # .10 is the NAT's own


def test_options_take_the_config_unless_given(shipped: ApplianceConfig) -> None:
    chosen = demo.options(CONFIG, shipped)
    assert (chosen.memory_mib, chosen.cpus, chosen.taps, chosen.bridges) == (128, 1, (), ())
    chosen = demo.options(CONFIG, shipped, memory_mib=77, cpus=2, taps="t0,t1", bridged=True)
    assert (chosen.memory_mib, chosen.cpus, chosen.taps) == (77, 2, ("t0", "t1"))
    assert chosen.bridges == ("natvm-wan", "natvm-lan")


def test_bad_options_are_one_line_each(shipped: ApplianceConfig) -> None:
    with pytest.raises(ImageError, match="--taps takes two names"):
        demo.options(CONFIG, shipped, taps="only-one")
    unbridged = shipped._replace(lan=shipped.lan._replace(bridge=None))
    with pytest.raises(ImageError, match="names no BridgeName"):
        demo.options(Path("mine.json"), unbridged, bridged=True)
