"""natvm under real Xen: the VM tier's traffic checks through a PVH guest on netfront vifs, then
a fatal configuration that xl restarts per on_reboot, and a good one that forwards again."""

import json
import re
from pathlib import PurePosixPath

import pytest

from image import xenboot
from image.dom0 import init, xlcfg
from tests.support import checks, traffic
from tests.support.routers import Nat
from tests.support.topology import Topology

pytestmark = pytest.mark.xen
XL = "/usr/lib/xen-4.17/bin/xl"
GUEST = "natvm"  # xen.cfg's name
FATAL_WORD = "natvm.mtu=12"  # below any usable MTU: natvm's config refuses it, fatally
RESTART_TIMEOUT = 180.0


# The Xen tier runs fewer checks than the VM tier: each costs minutes under nested TCG.
XEN_CHECKS = (
    *checks.select(
        "ping_lan_to_wan",
        "http_bulk_download",
        "udp_endpoint_independent_mapping",
        "udp_address_dependent_filtering",
        "port_forward_tcp",
        "udp_port_unreachable",
        "ttl_expiry",
    ),
    # A known gap of natvm's, not of the harness: its receive buffers are sized by its memory
    # (shell.socket_buffer_size: 1/128, 0.7 MiB in a 128 MiB guest), and every frame xen-netfront
    # delivers holds a page (a truesize of about 4.5 KiB, three times a virtio frame's), so the
    # burst fills the buffers after about 300 frames a side and the guest's kernel drops the rest
    # unseen: natvm counts about 590 of the 1420 malformed frames (1323 under QEMU's virtio; 1323
    # here too with `memory=512`). Everything the check asserts before its counter floor still
    # holds (natvm lives, no broken header crosses, no LAN address leaks). Not strict: how many
    # frames the kernel drops depends on how fast the sender outruns natvm on the day (on a loaded
    # machine the burst arrives slowly enough and all of it is counted: seen), and only the
    # counter floor's timeout is excused, every other assertion still fails the test.
    pytest.param(
        *checks.select("malformed_burst"),
        marks=pytest.mark.xfail(
            strict=False,
            raises=TimeoutError,
            reason="netfront's page-per-frame truesize fills natvm's receive buffers in a burst",
        ),
    ),
)


@checks.parametrize(XEN_CHECKS)
def test_check(check: checks.Check, nat: Nat, request: pytest.FixtureRequest) -> None:
    check.run(request)


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
