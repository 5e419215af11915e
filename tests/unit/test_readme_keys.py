"""README.md's two key tables agree with appliance.config's declarations of the keys.

The `ManifestPassthrough.nat` table gives each key's default and rule; the "Kernel command-line
overrides" table gives each natvm.* word. Every declared key must have its row, with the default and
the bounds the declaration states, and no row may name a key that is not declared."""

import json
import re
from pathlib import Path

import pytest

from appliance.config import nat_keys, override_keys

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
NAT_KEYS = nat_keys()


def table(header: str) -> list[list[str]]:
    """The rows of the table whose header row starts with header, each a list of cells."""
    lines = README[README.index(header) :].splitlines()
    rows = []
    for line in lines[2:]:  # past the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def plain(text: str) -> str:
    """A cell without its backticks, as the declarations spell names and values."""
    return text.replace("`", "")


# dotted key under ManifestPassthrough.nat ("[]" dropped), default, rule: as the README has them
NAT_TABLE = [
    (plain(name).removesuffix("[]"), plain(default), plain(rule))
    for name, _type, default, rule in table("| Key (under `ManifestPassthrough.nat`) |")
]
NAT_ROWS = {name: (default, rule) for name, default, rule in NAT_TABLE}


def words_of(cell: str) -> list[str]:
    """The natvm.* words a row names: "`natvm.timeout.udp`, `.tcp_established`" names two."""
    words: list[str] = []
    for name in re.findall(r"`([^`]+)`", cell):
        words.append(name if name.startswith("natvm.") else words[-1].rpartition(".")[0] + name)
    return words


WORD_ROWS = {tuple(words_of(words)): plain(value) for words, value in table("| Key | Value |")}


def readme_default(value: object) -> str:
    """A JSON default as the README's Default column writes it: an empty list is "none"."""
    return "none" if value == [] else value if isinstance(value, str) else json.dumps(value)


def test_the_nat_table_has_a_row_for_each_declared_key_and_no_other() -> None:
    assert set(NAT_KEYS) - set(NAT_ROWS) == set(), "declared keys without a README row"
    assert set(NAT_ROWS) - set(NAT_KEYS) == set(), "README rows of undeclared keys"
    assert len(NAT_TABLE) == len(NAT_ROWS), "a key with two README rows"


@pytest.mark.parametrize("name", NAT_KEYS)
def test_the_nat_table_states_the_declared_default_and_bounds(name: str) -> None:
    declared = NAT_KEYS[name]
    default, rule = NAT_ROWS[name]
    # the README quotes a default where its JSON type is not obvious ("1024-65535")
    assert default.strip('"') == readme_default(declared.kind.write(declared.default))
    bounds = declared.kind.bounds()  # "" where the README says it in words (port_forwards)
    assert not bounds or re.search(rf"(?<![\w.]){re.escape(bounds)}(?![\w.])", rule), rule


def test_the_kernel_table_names_each_natvm_word_and_no_other() -> None:
    named = [word for words in WORD_ROWS for word in words]
    assert sorted(named) == sorted(override_keys())


def test_bounds_the_kernel_table_states_are_the_declared_ones() -> None:
    bounds = {declared.word: declared.kind.bounds() for declared in NAT_KEYS.values()}
    for words, value in WORD_ROWS.items():
        for stated in re.findall(r"[0-9]+\.\.[0-9]+", value):
            assert stated in {bounds.get(word) for word in words}, (words, stated)
