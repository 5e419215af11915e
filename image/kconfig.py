"""Kernel build configurations: a `.config` (natvm's own kernel, image/kbuild.py; a Debian
kernel's `/boot/config-<release>`, the Xen tier's dom0) or a fragment, read as option -> value.
"""

import re
from pathlib import Path


def parse(text: str) -> dict[str, str]:
    """A .config or a fragment as option -> value; "# CONFIG_X is not set" is "n"."""
    options = {name: "n" for name in re.findall(r"^# (CONFIG_\w+) is not set$", text, re.M)}
    options |= dict(re.findall(r"^(CONFIG_\w+)=(\S+)$", text, flags=re.MULTILINE))
    return options


def read(path: Path) -> dict[str, str]:
    return parse(path.read_text())


def missing(options: dict[str, str], wanted: dict[str, tuple[str, str]]) -> list[str]:
    """`wanted` options the config lacks, as "CONFIG_X (why)"."""
    out = []
    for name, (level, why) in wanted.items():
        have = options.get(name)
        if have != "y" and not (level == "m" and have == "m"):
            out.append(f"{name} ({why})")
    return out
