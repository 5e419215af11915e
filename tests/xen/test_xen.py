"""natvm under real Xen: the VM tier's traffic checks through a PVH guest on netfront vifs, then
a fatal configuration that xl restarts per on_reboot, and a good one that forwards again."""

import json
import re
from pathlib import PurePosixPath

import pytest

from image import xenboot
from image.dom0 import init, xlcfg
from tests.support import traffic
from tests.support.routers import Nat
from tests.support.services import Services
from tests.support.topology import Topology

pytestmark = pytest.mark.xen
XL = "/usr/lib/xen-4.17/bin/xl"
GUEST = "natvm"  # xen.cfg's name
FATAL_WORD = "natvm.mtu=12"  # below any usable MTU: natvm's config refuses it, fatally
RESTART_TIMEOUT = 180.0


def test_ping_lan_to_wan(topology: Topology, nat: Nat) -> None:
    traffic.check_ping_lan_to_wan(topology)


def test_http_download_checked_by_hash(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_http_bulk_download(topology, services)


def test_udp_endpoint_independent_mapping(topology: Topology, nat: Nat) -> None:
    traffic.check_udp_endpoint_independent_mapping(topology)


def test_udp_address_dependent_filtering(topology: Topology, nat: Nat) -> None:
    traffic.check_udp_address_dependent_filtering(topology)


def test_port_forward_tcp(topology: Topology, nat: Nat, services: Services) -> None:
    traffic.check_port_forward_tcp(topology, services)


def test_icmp_error_translated_back(topology: Topology, nat: Nat) -> None:
    traffic.check_udp_port_unreachable(topology)


def test_ttl_1_answered(topology: Topology, nat: Nat) -> None:
    traffic.check_ttl_expiry(topology)


# A known gap of natvm's, not of the harness: its receive buffers are sized by its memory
# (shell.socket_buffer_size: 1/128, 0.7 MiB in a 128 MiB guest), and every frame xen-netfront
# delivers holds a page (a truesize of about 4.5 KiB, three times a virtio frame's), so the burst
# fills the buffers after about 300 frames a side and the guest's kernel drops the rest unseen:
# natvm counts about 590 of the 1420 malformed frames (1323 under QEMU's virtio; 1323 here too
# with `memory=512`). Everything the check asserts before its counter floor still holds (natvm
# lives, no broken header crosses, no LAN address leaks); strict: once natvm counts them, this
# passes and the marker must go.
@pytest.mark.xfail(
    strict=True,
    raises=TimeoutError,
    reason="netfront's page-per-frame truesize fills natvm's receive buffers in a burst",
)
def test_malformed_burst(topology: Topology, nat: Nat) -> None:
    traffic.check_malformed_burst(topology, nat)


def domid(nested: xenboot.NestedXen) -> int:
    assert nested.control is not None
    return int(nested.control.run(XL, "domid", GUEST).strip())


def test_a_fatal_configuration_is_restarted_by_xl_and_a_good_one_forwards_again(
    topology: Topology, nat: Nat, nested: xenboot.NestedXen
) -> None:
    """A second cfg, xen.cfg with a bad natvm.* word on its command line, created as
    xen-create.sh creates xen.cfg: natvm logs the fatal error and reboots, and xl restarts it
    (on_reboot = "restart": a new domain, the same error, the same kernel found again). Then
    xen.cfg as built again: READY, and it forwards."""
    control, console = nested.control, nested.console
    assert control is not None
    shipped = control.run(
        "/usr/bin/python3.11", "-c", "print(open('/guest/xen.cfg').read(), end='')"
    )
    fatal_cfg = PurePosixPath("/guest/fatal.cfg")
    derived = xlcfg.with_cmdline_words(shipped, (FATAL_WORD,))
    control.write(str(fatal_cfg), derived)
    control.run(XL, "destroy", GUEST)
    mark = len(console.lines)
    # xen-create.sh's command line (the dom0 has no shell to run the script): the restart below
    # shows the kernel's absolute path outlives the command, as xl's daemon restarts from /.
    control.run(XL, *xlcfg.create_args(fatal_cfg, derived), cwd="/")
    first = domid(nested)

    def fatal(line: xenboot.Line) -> bool:
        return line.source == GUEST and "natvm: fatal: natvm.mtu" in line.text

    seen = console.wait_for(fatal, "no fatal error from natvm", RESTART_TIMEOUT, GUEST, mark)
    again = console.wait_for(
        fatal, "xl did not restart natvm", RESTART_TIMEOUT, GUEST, console.lines.index(seen) + 1
    )
    restarted = domid(nested)
    assert restarted != first, "the same domain printed the error twice: no restart"
    assert not [line for line in console.lines[mark:] if xenboot.is_ready(GUEST)(line)]
    print(f"fatal at {seen.at:.1f} s (domain {first}), again at {again.at:.1f} s ({restarted})")
    # What the restart used: the configuration libxl stored for the domain, overrides applied.
    (stored,) = json.loads(control.run(XL, "list", "-l", GUEST))
    files = {key: stored["config"]["b_info"][key] for key in xlcfg.FILE_KEYS}
    assert files == {"kernel": "/guest/vmlinuz", "ramdisk": "/guest/initramfs"}

    control.run(XL, "destroy", GUEST)
    mark = len(console.lines)
    control.run(XL, *xlcfg.create_args(PurePosixPath(init.GUEST_CFG), shipped), cwd="/")
    ready = console.wait_for(
        xenboot.is_ready(GUEST), "natvm never got READY", RESTART_TIMEOUT, GUEST, mark
    )
    assert re.match(r"READY wan=eth0 ", ready.text)
    traffic.check_ping_lan_to_wan(topology)
    traffic.check_udp_endpoint_independent_mapping(topology)
