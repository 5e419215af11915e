"""The traffic checks that more than one tier runs, declared once with the fixtures each needs.

A tier runs its selection through one test, ``@checks.parametrize(selection)`` over
``test_check(check, nat, request)``, whose ids are the checks' names. What differs per tier (a skip
under the kernel reference, an expected failure) stays in the tier's module, next to its selection.
A check is a ``check_*`` function of tests.support.traffic: it takes the ``topology`` fixture, then
the fixtures its ``needs`` names, in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import traffic


@dataclass(frozen=True)
class Check:
    function: Callable[..., None]
    needs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.function.__name__.removeprefix("check_")

    def run(self, request: pytest.FixtureRequest) -> None:
        """The check, on the fixtures it needs as the requesting test's tier made them."""
        self.function(*(request.getfixturevalue(name) for name in ("topology", *self.needs)))


LAN_TO_WAN = (
    Check(traffic.check_ping_lan_to_wan),
    Check(traffic.check_http_fetch, ("services",)),
    Check(traffic.check_http_bulk_download, ("services",)),
    Check(traffic.check_iperf_bulk_upload, ("services",)),
    Check(traffic.check_tcp_bulk_upload),
    Check(traffic.check_dns_query, ("services",)),
    Check(traffic.check_udp_endpoint_independent_mapping),
    Check(traffic.check_udp_address_dependent_filtering),
    Check(traffic.check_ttl_expiry),
    Check(traffic.check_traceroute),
    Check(traffic.check_udp_port_unreachable),
)
WAN_TO_LAN = (
    Check(traffic.check_unsolicited_inbound_dropped),
    Check(traffic.check_port_forward_tcp, ("services",)),
    Check(traffic.check_port_forward_udp),
    Check(traffic.check_hairpin_tcp, ("services",)),
    Check(traffic.check_hairpin_udp),
    Check(traffic.check_ping_appliance_addresses),
)
BAD_INPUT = (
    Check(traffic.check_malformed_burst, ("nat",)),
    Check(traffic.check_udp_flood, ("nat", "services")),
)
ALL = LAN_TO_WAN + WAN_TO_LAN + BAD_INPUT


def select(*names: str) -> tuple[Check, ...]:
    """The checks of these names, in this order (a misspelt name fails the collection)."""
    by_name = {check.name: check for check in ALL}
    return tuple(by_name[name] for name in names)


def parametrize(selection: Sequence[object]) -> pytest.MarkDecorator:
    """``check`` over the selection (checks, or ``pytest.param``s of one with a tier's marks)."""

    def test_id(check: Any) -> str:
        return str(check.name)

    return pytest.mark.parametrize("check", selection, ids=test_id)
