"""`python -m appliance`'s arguments: which downstream each mode takes, as one line each."""

import argparse
import json
from pathlib import Path

import pytest

from appliance.cli import client_spec, main
from tests.unit.nat_harness import ROOT


def config_file(tmp_path: Path, netvm: bool) -> str:
    document = json.loads((ROOT / "ops-config.json").read_text())
    document["ManifestPassthrough"]["nat"]["netvm"] = netvm
    path = tmp_path / "ops-config.json"
    path.write_text(json.dumps(document))
    return str(path)


def test_a_client_is_interface_address_and_mac() -> None:
    spec = client_spec("vif3.0=10.137.0.5,00:16:3e:5e:6c:05")
    assert (spec.ifname, str(spec.ip), spec.mac.hex(":")) == (
        "vif3.0",
        "10.137.0.5",
        "00:16:3e:5e:6c:05",
    )


@pytest.mark.parametrize(
    "text",
    ["vif3.0", "vif3.0=10.137.0.5", "=10.137.0.5,00:16:3e:5e:6c:05", "v=x,00:16:3e:5e:6c:05",
     "v=10.137.0.5,00:16:3e", "v=10.137.0.5,zz:16:3e:5e:6c:05"],
)  # fmt: skip
def test_a_malformed_client_is_refused_by_name(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not IF=IP,MAC"):
        client_spec(text)


@pytest.mark.parametrize(
    ("netvm", "downstream", "message"),
    [
        (True, ["--lan", "lan0"], "--lan: netvm mode has no LAN NIC; name clients with --client"),
        (False, [], "--lan is required and --client is for netvm mode only"),
        (
            False,
            ["--lan", "lan0", "--client", "vif1.0=10.77.0.5,00:16:3e:5e:6c:05"],
            "--lan is required and --client is for netvm mode only",
        ),
    ],
)
def test_the_downstream_must_fit_the_mode(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    netvm: bool,
    downstream: list[str],
    message: str,
) -> None:
    argv = ["--config", config_file(tmp_path, netvm), "--wan", "wan0", *downstream]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"natvm: error: {message}\n"
