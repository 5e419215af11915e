"""A nested boot that fails says why in its first line, ends with the console tails of the dom0
and the guest, and leaves nothing running."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from image import xenboot, xenhost
from image.build import Build
from tests.support.routers import nested_xen
from tests.support.topology import Attach, Topology, session_prefix, topology

pytestmark = pytest.mark.xen


@pytest.fixture(scope="module")
def wired() -> Iterator[Topology]:
    """Namespaces of this module's own: this nested boot is not the tier's, and not on its taps."""
    with topology(session_prefix() + "xenfail-", Attach.TAP) as built:
        yield built


def test_a_guest_xl_cannot_create_fails_with_both_consoles_and_stops_qemu(
    wired: Topology, image: Build, xen_host: xenhost.XenHost, tmp_path: Path
) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"not a kernel\n")
    (tmp_path / "initramfs").write_bytes((image.out / "initramfs").read_bytes())
    # xen.cfg names its files relative to itself: beside the copy, the bad kernel is the one.
    shutil.copyfile(image.out / "xen.cfg", tmp_path / "xen.cfg")
    with (
        pytest.raises(xenboot.BootError) as caught,
        nested_xen(xen_host.out, wired, tmp_path, tmp_path / "xen.cfg") as nested,
    ):
        nested.wait_booted(180)
    first, *rest = caught.value.message.splitlines()
    assert first.startswith("natvm never printed READY: QEMU exited")
    assert "dom0 said: dom0: fatal: Dom0Error: xl create" in first
    assert "last 40 console lines of dom0 (and Xen):" in rest
    assert any(line.startswith("dom0: xl: ") for line in rest)
    assert "last 40 console lines of natvm:" in rest
    assert nested.console.proc.poll() is not None
    pids = subprocess.run(["ip", "netns", "pids", wired.router], capture_output=True, text=True)
    assert pids.stdout.split() == []
