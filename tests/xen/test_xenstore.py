"""natvm's xenstore client (appliance/xenstore.py) and vif state machine (appliance/vifs.py)
against the real thing: the test dom0's xenstored, libxl and xen-netback.

The dom0's Python is the product's runtime with only the modules its own scripts import, so the
test sends the probe (xenstore_probe.py), natvm's two modules and the standard-library modules
they load (found as the image builder finds them, from the same pinned packages) to a scratch
directory, and runs the probe there. In the vif check the dom0 is the
backend of natvm's vifs, so the state machine sees libxl's and netback's real writes for a vif
that `xl network-attach` adds and `xl network-detach` takes away. Here the toolstack itself
removes a closed backend's directory (after running its hotplug script, which reads it), so the
probe runs the machine with removes_closed=False; the driver domain's removal, and natvm as the
driver domain of client domUs, are the nested harness's next step.
"""

import json
from pathlib import Path

import pytest

from image import runtime, xenboot, xenhost
from image.dom0 import xlcfg

pytestmark = pytest.mark.xen
SOURCE = Path(__file__).resolve().parents[2]
REMOTE = "/tmp/natvm-xenstore"
PYTHON = "/usr/bin/python3.11"
ENTRY = ("appliance.vifs", "appliance.xenstore")
GUEST = "natvm"
CLIENT_IP = "10.137.0.9"
PROBE = "/local/domain/0/natvm-probe"

MAKEDIRS = "import os, sys; [os.makedirs(path, exist_ok=True) for path in sys.argv[1:]]"


def _remote_path(file: Path, root: Path) -> str:
    if file.is_relative_to(SOURCE):
        return str(file.relative_to(SOURCE))
    if file.suffix == ".so":
        return file.name
    return str(file.relative_to(root / runtime.STDLIB))


def probe_files(root: Path) -> dict[str, Path]:
    """Path in the dom0 -> file: natvm's modules and every module they load, whole packages
    included (the dom0 has some of each package only: importlib without importlib._bootstrap),
    ahead of the dom0's own on the probe's sys.path; the same versions, from the same packages."""
    found = runtime.modules(root, SOURCE, ENTRY)
    found.pop("__main__", None)
    return {f"{REMOTE}/{_remote_path(file, root)}": file for file in found.values()}


@pytest.fixture(scope="module")
def probe(nested: xenboot.NestedXen, xen_host: xenhost.XenHost) -> xenboot.Control:
    control = nested.control
    assert control is not None
    files = probe_files(xen_host.root)
    folders = sorted({str(Path(path).parent) for path in files})
    control.run(PYTHON, "-c", MAKEDIRS, *folders)
    for path, file in sorted(files.items()):
        control.write(path, file.read_bytes())
    probe = Path(__file__).with_name("xenstore_probe.py")
    control.write(f"{REMOTE}/xenstore_probe.py", probe.read_bytes())
    print(f"sent to the dom0: xenstore_probe.py and {len(files)} modules")
    return control


def run_probe(control: xenboot.Control, *argv: str) -> dict[str, object]:
    output = control.run(PYTHON, f"{REMOTE}/xenstore_probe.py", *argv, timeout=300.0)
    result = json.loads(output.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("path", ["/dev/xen/xenbus", "/var/run/xenstored/socket"])
def test_the_client_against_the_real_xenstored(probe: xenboot.Control, path: str) -> None:
    results = run_probe(probe, "protocol")
    print(json.dumps(results, indent=1))
    got = results[path]
    assert isinstance(got, dict)
    assert got["name"] == "Domain-0"
    assert got["domain_path"] == "/local/domain/0"
    assert got["first_event"] == [[PROBE, "probe"]]  # a watch fires once when set
    assert got["read_after_other_write"] == "1"  # the reply, past the event that came first
    assert [f"{PROBE}/y", "probe"] in got["events"]  # that event, queued, not lost
    assert got["directory"] == ["x", "y"]
    assert got["error"] == ["ENOENT", 2, f"xenstore READ {PROBE}/missing: ENOENT"]
    assert (got["outside_transaction"], got["after_commit"]) == (None, "3")
    assert got["after_remove"] == ["t", "x", "y"]  # deep/er/leaf and its emptied parents
    assert got["gone"] is None
    if path == "/dev/xen/xenbus":
        assert got["own_domid"] == 0


def test_a_vif_attached_and_detached_by_xl(probe: xenboot.Control) -> None:
    cfg = probe.run(PYTHON, "-c", "print(open('/guest/xen.cfg').read(), end='')")
    bridge = xlcfg.vif_bridges(cfg)[1]
    result = run_probe(probe, "vifs", GUEST, bridge, CLIENT_IP)
    print(json.dumps(result, indent=1))
    domid, home, log = result["domid"], result["home"], result["log"]
    assert home == "/local/domain/0"
    assert isinstance(log, list)
    before = result["before"]
    assert isinstance(before, list) and before  # natvm's own vifs, served by the dom0
    # natvm's vifs have no ip key (xen.cfg gives none): each dropped with that reason
    dropped = [entry for entry in log if entry["decision"] == "Dropped"]
    assert sorted(entry["path"] for entry in dropped) == [
        f"{home}/backend/vif/{domid}/{devid}" for devid in sorted(before)
    ]
    assert {entry["reason"] for entry in dropped} == {"no ip key"}
    attach = result["attach"]
    assert isinstance(attach, dict) and attach["status"] == 0, attach
    [devid] = result["added"]
    interface = f"vif{domid}.{devid}"
    served = [entry for entry in log if entry.get("interface") == interface]
    assert [entry["decision"] for entry in served] == ["AwaitInterface", "Attach", "Detach"]
    assert served[1]["ip"] == CLIENT_IP
    assert result["states_attached"][-1] == "4"  # netback connected
    detach = result["detach"]
    assert isinstance(detach, dict) and detach["status"] == 0, detach
    assert served[2]["reason"].startswith("online=0, state ")
    assert result["states_detached"][-1] is None  # libxl removed the backend directory
    assert result["clients_left"] == []
    print(
        f"{interface}: attach decided at {served[1]['at']} s, xl network-attach took "
        f"{attach['seconds']:.1f} s; detach decided at {served[2]['at']} s "
        f"({served[2]['reason']}), xl network-detach took {detach['seconds']:.1f} s"
    )
