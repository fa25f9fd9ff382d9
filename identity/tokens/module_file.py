"""What a PKCS#11 module file a client names must be before anything loads it.

``ssh-add -s PATH`` lets a client choose a shared library for the agent to load, and a
library runs code (its constructors) the moment it is loaded. :func:`open_module_file`
decides whether the file at PATH may be loaded, without loading it, and hands back an
open descriptor of the very file it checked:

1. PATH is resolved once (``realpath``); the resolved path must lie in an allowed
   folder (ssh-agent's default ``-P``: ``/usr/lib*/*``, ``/usr/local/lib*/*``).
2. That resolved path is opened ``O_RDONLY | O_NOFOLLOW | O_CLOEXEC``. The descriptor is
   then checked, not the name: ``/proc/self/fd/N`` must name a path in an allowed folder
   (a folder swapped for a symlink in between shows here), ``fstat`` must show a regular
   file owned by root or the agent's user and writable by neither group nor others.
3. Its ELF dynamic symbol table (``.dynsym`` and its string table) is read from the
   descriptor: it must be a well-formed shared object (``ET_DYN``) of this machine's
   class, byte order and architecture, and define the function ``C_GetFunctionList``
   (OpenSSH's ``lib_contains_symbol`` check).

The caller loads ``/proc/self/fd/N`` (:attr:`ModuleFile.load_path`), so a symlink
flipped after the check cannot change what is loaded: the checked path is the loaded
file. Every refusal raises :class:`ModuleFileError` saying which rule refused.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from idm.identity.server.strictmodes import unsafe_owner_or_mode
from idm.identity.tokens.errors import ProviderError

# ssh-agent's default allow-list for `ssh-add -s` (its -P option): system library folders.
ALLOWED_PREFIXES = ("/usr/lib/", "/usr/lib64/", "/usr/local/lib/", "/usr/local/lib64/")
REQUIRED_SYMBOL = "C_GetFunctionList"
MAX_MODULE_SIZE = 1 << 30  # larger is not a PKCS#11 module; refuse rather than read it
MAX_SYMBOLS = 1 << 20

_ELF_MAGIC = b"\x7fELF"
ET_DYN = 3
SHT_DYNSYM = 11
SHT_STRTAB = 3
SHN_UNDEF = 0
STT_FUNC, STT_GNU_IFUNC = 2, 10
STB_GLOBAL, STB_WEAK = 1, 2
STV_DEFAULT, STV_PROTECTED = 0, 3


class ModuleFileError(ProviderError):
    """The file may not be loaded as a PKCS#11 module (the message names the rule)."""


@dataclass(frozen=True)
class ElfKind:
    """ELF class (1: 32-bit, 2: 64-bit), byte order (1: little, 2: big) and machine."""

    elf_class: int
    data: int
    machine: int


def _header(raw: bytes) -> tuple[ElfKind, str]:
    """The kind of an ELF header and the struct byte-order prefix; ValueError if not ELF."""
    if len(raw) < 20 or raw[:4] != _ELF_MAGIC:
        raise ValueError("not an ELF file")
    elf_class, data = raw[4], raw[5]
    if elf_class not in (1, 2) or data not in (1, 2) or raw[6] != 1:
        raise ValueError("not a well-formed ELF header")
    order = "<" if data == 1 else ">"
    (machine,) = struct.unpack_from(order + "H", raw, 18)
    return ElfKind(elf_class, data, machine), order


def this_machine() -> ElfKind:
    """The ELF kind of the running interpreter: the only kind it can load."""
    with open("/proc/self/exe", "rb") as f:
        return _header(f.read(64))[0]


def exported_functions(fd: int, wanted: ElfKind | None = None) -> set[str]:
    """Names of the functions the ELF shared object open at ``fd`` defines and exports.

    Reads only the header, the section headers, ``.dynsym`` and its string table, with
    ``os.pread`` (the file offset is untouched). Raises :class:`ModuleFileError` for
    anything that is not a well-formed ELF shared object of ``wanted`` kind (default:
    this machine's).
    """
    size = os.fstat(fd).st_size
    if size > MAX_MODULE_SIZE:
        raise ModuleFileError(f"the file is {size} bytes: not a PKCS#11 module")

    def read(offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > size:
            raise ModuleFileError(f"not a well-formed ELF file: its {what} lies outside it")
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise ModuleFileError(f"cannot read its {what}")
        return data

    try:
        kind, order = _header(os.pread(fd, 64, 0))
    except ValueError as exc:
        raise ModuleFileError(str(exc)) from None
    wanted = wanted or this_machine()
    if kind != wanted:
        raise ModuleFileError(
            f"an ELF file for another machine ({32 * kind.elf_class}-bit, "
            f"machine {kind.machine}); this one loads {32 * wanted.elf_class}-bit, "
            f"machine {wanted.machine}")
    is64 = kind.elf_class == 2
    ehdr = struct.Struct(order + ("16xHHIQQQIHHHHHH" if is64 else "16xHHIIIIIHHHHHH"))
    (e_type, _m, _v, _entry, _phoff, shoff, _flags, _ehsize, _phes, _phnum, shentsize,
     shnum, _shstrndx) = ehdr.unpack(read(0, ehdr.size, "header"))
    if e_type != ET_DYN:
        raise ModuleFileError(f"not a shared object (ELF type {e_type})")
    shdr = struct.Struct(order + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII"))
    if shoff == 0 or shnum == 0 or shentsize < shdr.size:
        raise ModuleFileError("no section headers: its symbol table cannot be read")
    table = read(shoff, shentsize * shnum, "section headers")
    sections = [shdr.unpack_from(table, i * shentsize) for i in range(shnum)]
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    dynsym = [s for s in sections if s[1] == SHT_DYNSYM]
    if len(dynsym) != 1:
        raise ModuleFileError(f"{len(dynsym)} dynamic symbol tables, not one")
    _n, _t, _f, _a, sym_off, sym_size, link, _i, _al, sym_entsize = dynsym[0]
    sym = struct.Struct(order + ("IBBHQQ" if is64 else "IIIBBH"))
    if link >= shnum or sections[link][1] != SHT_STRTAB:
        raise ModuleFileError("its dynamic symbol table has no string table")
    if sym_entsize < sym.size or sym_size % sym_entsize or sym_size // sym_entsize > MAX_SYMBOLS:
        raise ModuleFileError("not a well-formed dynamic symbol table")
    strings = read(sections[link][4], sections[link][5], "dynamic string table")
    symbols = read(sym_off, sym_size, "dynamic symbol table")
    names: set[str] = set()
    for i in range(sym_size // sym_entsize):
        fields = sym.unpack_from(symbols, i * sym_entsize)
        if is64:
            name_off, info, other, shndx = fields[0], fields[1], fields[2], fields[3]
        else:
            name_off, info, other, shndx = fields[0], fields[3], fields[4], fields[5]
        if shndx == SHN_UNDEF or info & 0xF not in (STT_FUNC, STT_GNU_IFUNC):
            continue  # imported, or not a function
        if info >> 4 not in (STB_GLOBAL, STB_WEAK) or other & 3 not in (STV_DEFAULT,
                                                                        STV_PROTECTED):
            continue  # not exported
        end = strings.find(b"\0", name_off)
        if name_off >= len(strings) or end < 0:
            raise ModuleFileError("a symbol name lies outside the dynamic string table")
        names.add(strings[name_off:end].decode("ascii", "replace"))
    return names


@dataclass
class ModuleFile:
    """An open, checked PKCS#11 module file: load it through :attr:`load_path`."""

    fd: int
    path: str  # the resolved path that was checked (and the file opened)

    @property
    def load_path(self) -> str:
        """``/proc/self/fd/N``: the checked file, whatever its name points to now."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        """Close the descriptor (after the module is loaded, or when giving up)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _allowed(path: str, prefixes: Sequence[str]) -> bool:
    return path.startswith(tuple(prefixes))


def open_module_file(path: str, prefixes: Sequence[str] = ALLOWED_PREFIXES) -> ModuleFile:
    """Resolve, open and check a PKCS#11 module file (see the module docstring).

    The descriptor is close-on-exec; pass it on explicitly (``pass_fds``) to the process
    that loads it. Raises :class:`ModuleFileError` naming the rule that refused.
    """
    real = os.path.realpath(path)
    if not _allowed(real, prefixes):
        raise ModuleFileError(
            f"provider {path} ({real}) is not allowed: not in an allowed folder "
            f"({', '.join(prefixes)}) and not in [tokens] providers")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ModuleFileError(f"provider {real}: {exc.strerror}") from None
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if not _allowed(opened, prefixes):
            raise ModuleFileError(f"provider {path}: the file opened is {opened}, which is "
                                  "not in an allowed folder (its path changed while checked)")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModuleFileError(f"provider {real} is not a regular file")
        problem = unsafe_owner_or_mode(st, os.getuid())
        if problem:
            raise ModuleFileError(f"provider {real} is {problem}")
        if REQUIRED_SYMBOL not in exported_functions(fd):
            raise ModuleFileError(f"provider {real} is not a PKCS#11 module: it does not "
                                  f"export {REQUIRED_SYMBOL}")
    except ModuleFileError as exc:
        os.close(fd)
        if str(exc).startswith("provider "):
            raise
        raise ModuleFileError(f"provider {real}: {exc}") from None
    except OSError as exc:
        os.close(fd)
        raise ModuleFileError(f"provider {real}: {exc.strerror or exc}") from None
    return ModuleFile(fd, opened)
