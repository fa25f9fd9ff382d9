"""Tiny shared libraries built with gcc for tests of what loads a PKCS#11 module.

``build_library(workdir, out, marker, pkcs11=True)`` compiles a library whose
constructor appends the pid of every process that loads it to ``marker`` (so a test can
tell whether, and where, it was ever loaded); with ``pkcs11=True`` it also exports
``C_GetFunctionList`` (which fails), enough to pass for a PKCS#11 module until called.
``GCC`` is None when no compiler is installed (the Makefile's Debian packages bring it).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GCC = shutil.which("gcc")

LIBRARY_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen(MARKER, "a");
    if (f) { fprintf(f, "%d\n", (int)getpid()); fclose(f); }
}
#ifdef PKCS11
unsigned long C_GetFunctionList(void **list) { (void)list; return 5; /* GENERAL_ERROR */ }
#endif
"""


@dataclass
class Library:
    """A built test library and the file its constructor writes pids to."""

    path: Path
    marker: Path

    def loaded_in(self) -> list[int]:
        """Pids of the processes that loaded it so far."""
        return [int(x) for x in self.marker.read_text().split()] if self.marker.exists() else []


def build_library(workdir: Path, out: Path, marker: Path, *, pkcs11: bool) -> Library:
    """Compile the library to ``out`` (mode 0755); sources go to ``workdir``."""
    if GCC is None:
        raise RuntimeError("gcc is not installed")
    src = workdir / f"{out.stem}.c"
    src.write_text(LIBRARY_SOURCE)
    subprocess.run([GCC, "-shared", "-fPIC", "-o", str(out), f'-DMARKER="{marker}"',
                    *(["-DPKCS11"] if pkcs11 else []), str(src)], check=True)
    out.chmod(0o755)
    return Library(out, marker)
