"""The topology's addresses and the traffic checks' expectations are those of ops-config.json.

When this fails, the other tests of both tiers fail in confusing ways: fix the one that drifted.
"""

import json

import pytest

from tests.support import REPO, traffic
from tests.support.topology import APPLIANCE_LAN, APPLIANCE_WAN, CLIENT_A, GATEWAY

pytestmark = pytest.mark.netns


def test_topology_matches_ops_config() -> None:
    config = json.loads((REPO / "ops-config.json").read_text())
    wan, lan = config["RunConfig"]["Nics"][:2]
    nat = config["ManifestPassthrough"]["nat"]
    assert (wan["IPAddress"], wan["NetMask"], wan["Gateway"]) == (
        APPLIANCE_WAN,
        "255.255.255.0",
        GATEWAY,
    )
    assert (lan["IPAddress"], lan["NetMask"]) == (APPLIANCE_LAN, "255.255.255.0")
    forwards = {
        (f["protocol"], str(f["external_port"]), f["lan_host"], int(f["lan_port"]))
        for f in nat["port_forwards"]
    }
    assert forwards == {
        ("tcp", str(traffic.FORWARD_TCP), CLIENT_A, 80),
        ("udp", str(traffic.FORWARD_UDP), CLIENT_A, 53),
    }
    assert nat.get("filtering", "address-dependent") == "address-dependent"
    assert nat["ping_on_wan"] is True
