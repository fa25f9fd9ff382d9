"""What a client-named PKCS#11 module file must be before anything loads it
(idm.identity.tokens.module_file): real files, test libraries built with gcc, and
ELF headers cut and bent by hand. Nothing here loads a library: every marker stays empty.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from idm.identity.tokens.module_file import (
    ElfKind,
    ModuleFileError,
    exported_functions,
    open_module_file,
    this_machine,
)
from tests.softhsm import SOFTHSM_MODULE
from tests.testlibs import GCC, Library, build_library

needs_gcc = pytest.mark.skipif(GCC is None, reason="needs gcc")


@pytest.fixture
def libs(tmp_path: Path) -> Iterator[tuple[Path, Library, Library]]:
    """An allowed folder (for these tests: tmp_path/allowed) with a module and a plain .so."""
    if GCC is None:
        pytest.skip("needs gcc")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    module = build_library(tmp_path, allowed / "libmodule.so", tmp_path / "m", pkcs11=True)
    plain = build_library(tmp_path, allowed / "libplain.so", tmp_path / "p", pkcs11=False)
    yield allowed, module, plain
    assert module.loaded_in() == [] and plain.loaded_in() == []  # checked, never loaded


def _prefixes(allowed: Path) -> tuple[str]:
    return (f"{allowed}/",)


def test_softhsm_is_a_module_and_libc_is_not() -> None:
    m = open_module_file(SOFTHSM_MODULE)
    try:
        assert m.path == os.path.realpath(SOFTHSM_MODULE)
        assert m.load_path == f"/proc/self/fd/{m.fd}"
        assert os.path.samefile(m.load_path, SOFTHSM_MODULE)
    finally:
        m.close()
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    if os.path.exists(libc):
        with pytest.raises(ModuleFileError, match="does not export C_GetFunctionList"):
            open_module_file(libc)


def test_outside_the_allowed_folders_is_refused_by_its_resolved_path(tmp_path: Path) -> None:
    link = tmp_path / "libsofthsm2.so"
    link.symlink_to(SOFTHSM_MODULE)
    # the name is in tmp_path, the file in /usr/lib: allowed by where it really is
    open_module_file(str(link)).close()
    with pytest.raises(ModuleFileError, match="is not allowed: not in an allowed folder"):
        open_module_file(str(link), (f"{tmp_path}/",))


@needs_gcc
def test_exported_symbol_decides(libs: tuple[Path, Library, Library]) -> None:
    allowed, module, plain = libs
    open_module_file(str(module.path), _prefixes(allowed)).close()
    with pytest.raises(ModuleFileError, match="is not a PKCS#11 module"):
        open_module_file(str(plain.path), _prefixes(allowed))
    fd = os.open(module.path, os.O_RDONLY)
    try:
        assert "C_GetFunctionList" in exported_functions(fd)
    finally:
        os.close(fd)


@needs_gcc
def test_files_others_could_change_are_refused(libs: tuple[Path, Library, Library]) -> None:
    allowed, module, _ = libs
    module.path.chmod(0o775)
    with pytest.raises(ModuleFileError, match="writable by group or others"):
        open_module_file(str(module.path), _prefixes(allowed))
    module.path.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(module.path, 65534, 65534)
        with pytest.raises(ModuleFileError, match="owned by uid 65534, not root"):
            open_module_file(str(module.path), _prefixes(allowed))


def test_not_a_regular_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "libfifo.so"
    os.mkfifo(fifo)
    with pytest.raises(ModuleFileError, match="not a regular file"):
        open_module_file(str(fifo), (f"{tmp_path}/",))
    with pytest.raises(ModuleFileError, match="is not allowed"):
        open_module_file(str(tmp_path / "missing.so"), ("/nowhere/",))
    with pytest.raises(ModuleFileError, match="No such file"):
        open_module_file(str(tmp_path / "missing.so"), (f"{tmp_path}/",))


@needs_gcc
def test_a_folder_swapped_for_a_symlink_after_the_check_is_caught(
    libs: tuple[Path, Library, Library], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    allowed, module, _ = libs
    outside = tmp_path / "outside"
    outside.mkdir()
    os.replace(module.path, outside / module.path.name)
    (allowed / "sub").symlink_to(outside)
    # as if "sub" had been a real folder when the path was resolved, and was swapped for
    # a symlink before the open: the descriptor, not the name, shows where the file is
    monkeypatch.setattr(os.path, "realpath", lambda p: p)
    with pytest.raises(ModuleFileError, match="the file opened is .*outside.*its path changed"):
        open_module_file(str(allowed / "sub" / module.path.name), _prefixes(allowed))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o644)
    return path


@needs_gcc
def test_malformed_and_foreign_elf_files_are_refused(libs: tuple[Path, Library, Library],
                                                      tmp_path: Path) -> None:
    allowed, module, _ = libs
    good = module.path.read_bytes()
    here = this_machine()
    cases = {
        "text": (b"#!/bin/sh\necho hi\n", "not an ELF file"),
        "empty": (b"", "not an ELF file"),
        "header-only": (good[:64], "section headers lies outside it"),
        "other-class": (good[:4] + bytes([3 - here.elf_class]) + good[5:],
                        "an ELF file for another machine"),
        "other-machine": (good[:18] + struct.pack("<H", 0xB7 if here.machine != 0xB7 else 0x3E)
                          + good[20:], "an ELF file for another machine"),
        "executable": (good[:16] + struct.pack("<H", 2) + good[18:], "not a shared object"),
        "truncated": (good[: len(good) // 2], "lies outside it"),
    }
    for name, (data, message) in cases.items():
        path = _write(allowed / f"lib{name}.so", data)
        with pytest.raises(ModuleFileError, match=message):
            open_module_file(str(path), _prefixes(allowed))
    # a kind this machine does not run is refused even when the file is otherwise fine
    fd = os.open(module.path, os.O_RDONLY)
    try:
        with pytest.raises(ModuleFileError, match="another machine"):
            exported_functions(fd, ElfKind(here.elf_class, here.data, here.machine + 1))
    finally:
        os.close(fd)
