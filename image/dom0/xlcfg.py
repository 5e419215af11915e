"""Reading an `xl` domain configuration (xl.cfg(5)) as far as the test dom0 needs, deriving a
variant of it, and the `xl create` arguments that boot it from the folder it is in.

Rules: the file users get is the file tested, so nothing here rewrites what it does not have to.
`as_driver_domain` derives the net VM's configuration of the Qubes-style tests: the uplink vif
only (clients' vifs come from their own configurations, `backend=<name>`), `driver_domain=1`,
and the words of the net VM mode on the command line.
Values are read as xl reads them: a setting is `key = value` on one line, a string is in double
quotes with backslash escapes, a list is `[ "...", ... ]`. A vif spec is `key=value` pairs
separated by commas. `with_cmdline_words` appends to `cmdline`: xl ignores `extra=` whenever
`cmdline=` is set ("Warning: ignoring root= and extra= in favour of cmdline="), and natvm's
xen.cfg sets it.

`create_args` is the one command line that creates a domain from a configuration, for natvm's
xen-create.sh (image/deploy.py writes it from this function) and for the test dom0 alike. xen.cfg
names its kernel and ramdisk relative to its own folder; xl would resolve them against its working
directory, and its restart on reboot runs in xl's daemon, which has changed to /. So each relative
name goes on the command line as a `key="absolute path"` override: xl appends the overrides to the
file (the last setting of a key wins), and the domain's stored configuration, which the restart
uses, holds the absolute paths.
"""

import re
from pathlib import PurePosixPath

_SETTING = re.compile(r"^[ \t]*(\w+)[ \t]*=[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
FILE_KEYS = ("kernel", "ramdisk")  # the settings that name files xl reads when it creates


class ConfigError(ValueError):
    """The configuration lacks something the dom0 needs from it."""


def _unquote(body: str) -> str:
    return re.sub(r"\\(.)", r"\1", body)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def settings(text: str) -> dict[str, str]:
    """key -> raw value (as written, quotes and brackets included); the last one wins."""
    return {key: value for key, value in _SETTING.findall(text)}


def string(text: str, key: str) -> str:
    """The string setting `key`."""
    raw = settings(text).get(key)
    match = _STRING.fullmatch(raw or "")
    if match is None:
        raise ConfigError(f"no string setting {key!r} in the xl configuration")
    return _unquote(match.group(1))


def vifs(text: str) -> list[dict[str, str]]:
    """Each vif spec of the `vif` list as key -> value, in order (the first is WAN)."""
    raw = settings(text).get("vif", "")
    specs = [_unquote(body) for body in _STRING.findall(raw)]
    return [dict(part.split("=", 1) for part in spec.split(",") if "=" in part) for spec in specs]


def vif_bridges(text: str) -> list[str]:
    """The bridge of each vif, in order; every vif must name one."""
    bridges = [spec.get("bridge", "") for spec in vifs(text)]
    if not bridges or not all(bridges):
        raise ConfigError("every vif of the xl configuration must name its bridge")
    return bridges


def _replaced(text: str, key: str, value: str) -> str:
    """`text` with setting `key`'s line set to `value` (raw), every other line unchanged."""
    line = _SETTING.pattern.replace(r"(\w+)", f"({key})", 1)
    match = re.search(line, text, flags=re.MULTILINE)
    if match is None:
        raise ConfigError(f"no {key!r} setting in the xl configuration")
    return text[: match.start()] + f"{key} = {value}" + text[match.end() :]


def with_cmdline_words(text: str, words: tuple[str, ...]) -> str:
    """`text` with `words` appended to its `cmdline` setting, every other line unchanged."""
    value = " ".join((string(text, "cmdline"), *words))
    return _replaced(text, "cmdline", quote(value))


def create_args(cfg: PurePosixPath, text: str) -> list[str]:
    """`xl create`'s arguments for the configuration file `cfg`, whose text is `text`: the file,
    then each file it names by a relative path as an override with the path absolute against
    `cfg`'s folder (an absolute name stays as the file says)."""
    overrides = [
        f"{key}={quote(str(cfg.parent / named))}"
        for key in FILE_KEYS
        if not (named := PurePosixPath(string(text, key))).is_absolute()
    ]
    return ["create", str(cfg), *overrides]


def as_driver_domain(text: str, words: tuple[str, ...]) -> str:
    """`text` as a net VM's: its first (uplink) vif only, `driver_domain=1`, `words` appended to
    its command line."""
    raw = settings(text).get("vif", "")
    first = _STRING.search(raw)
    if first is None:
        raise ConfigError("the xl configuration has no vif for the uplink")
    uplink = _replaced(with_cmdline_words(text, words), "vif", f"[ {first.group(0)} ]")
    return uplink + "driver_domain = 1\n"
