"""`python -m appliance`'s arguments: which downstream each mode takes, as one line each."""

import argparse
import json
from pathlib import Path

import pytest

from appliance.cli import client_spec, firewall_spec, load_rules, main
from appliance.rules import Action
from appliance.shell import ShellError
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
        (False, [], "--lan is required and --client and --firewall are for netvm mode only"),
        (
            False,
            ["--lan", "lan0", "--client", "vif1.0=10.77.0.5,00:16:3e:5e:6c:05"],
            "--lan is required and --client and --firewall are for netvm mode only",
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


def test_firewall_rules_are_an_address_and_a_file_of_qubesdbs_keys(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"policy": "accept", "0000": "action=drop proto=tcp dstports=80"}))
    ip, given = firewall_spec(f"10.137.0.11={path}")
    assert str(ip) == "10.137.0.11" and given == path
    rules = load_rules(path)
    assert rules.policy is Action.ACCEPT and rules.rules[0].ports == (80, 80)
    with pytest.raises(argparse.ArgumentTypeError, match="is not IP=FILE"):
        firewall_spec(str(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"policy": "drop", "0000": "action=drop proto=gre"}',
         "{path}:0000: proto 'gre' is not one of tcp, udp, icmp"),
        ('["action=drop"]', "{path}: not a JSON object of strings"),
        ('{"policy": "drop"', "{path}: Expecting ',' delimiter: line 1 column 18 (char 17)"),
    ],
)  # fmt: skip
def test_bad_firewall_rules_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(content)
    with pytest.raises(ShellError) as error:
        load_rules(path)
    assert str(error.value) == "--firewall " + message.format(path=path)
