"""Just enough of ELF64 (little-endian) to find what a binary needs, without running it:
the libraries it links (DT_NEEDED), its program interpreter (PT_INTERP), and a kernel
module's `.modinfo` strings (where `depends=` names the modules to load first).
"""

import struct

_PT_INTERP = 3
_PT_DYNAMIC = 2
_DT_NEEDED = 1
_DT_STRTAB = 5


class Elf:
    """A parsed ELF64 little-endian file held in memory."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not a little-endian ELF64 file")
        self.data = data
        (self.phoff, self.shoff) = struct.unpack_from("<QQ", data, 0x20)
        (self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = (
            struct.unpack_from("<HHHHH", data, 0x36)
        )

    def _segments(self) -> list[tuple[int, int, int, int]]:
        """(type, offset, vaddr, filesz) of each program header."""
        out = []
        for i in range(self.phnum):
            base = self.phoff + i * self.phentsize
            kind, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from(
                "<IIQQQQ", self.data, base
            )
            out.append((kind, offset, vaddr, filesz))
        return out

    def _sections(self) -> dict[str, tuple[int, int]]:
        """name -> (offset, size) of each section."""
        raw = []
        for i in range(self.shnum):
            base = self.shoff + i * self.shentsize
            name, _t, _f, _a, offset, size = struct.unpack_from("<IIQQQQ", self.data, base)
            raw.append((name, offset, size))
        strtab = raw[self.shstrndx][1] if raw else 0
        return {self._cstring(strtab + name): (off, size) for name, off, size in raw}

    def _cstring(self, at: int) -> str:
        return self.data[at : self.data.index(b"\0", at)].decode()

    def _file_offset(self, vaddr: int) -> int:
        for kind, offset, start, size in self._segments():
            if kind == 1 and start <= vaddr < start + size:  # PT_LOAD
                return vaddr - start + offset
        raise ValueError(f"address {vaddr:#x} is in no loaded segment")

    def interpreter(self) -> str | None:
        for kind, offset, _vaddr, size in self._segments():
            if kind == _PT_INTERP:
                return self.data[offset : offset + size].rstrip(b"\0").decode()
        return None

    def needed(self) -> list[str]:
        """The DT_NEEDED library names, in order."""
        dynamic = [(o, s) for kind, o, _v, s in self._segments() if kind == _PT_DYNAMIC]
        if not dynamic:
            return []
        offset, size = dynamic[0]
        tags = [struct.unpack_from("<qQ", self.data, offset + i) for i in range(0, size, 16)]
        strtab = self._file_offset(next(v for t, v in tags if t == _DT_STRTAB))
        return [self._cstring(strtab + v) for t, v in tags if t == _DT_NEEDED]

    def modinfo(self) -> dict[str, str]:
        """A kernel module's `.modinfo` as key -> value (the last one wins for repeated keys)."""
        offset, size = self._sections()[".modinfo"]
        pairs = self.data[offset : offset + size].split(b"\0")
        return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
