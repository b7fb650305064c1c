"""Assemble small x86 snippets for raw-mode tests with GNU as (binutils, installed with gcc)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

_DIRECTIVE = {"real": ".code16", "protected": ".code32", "long": ".code64"}


def assemble(source: str, mode: str, origin: int) -> bytes:
    """Assemble ``source`` (AT&T syntax) for ``mode`` as flat code loaded at ``origin``."""
    with tempfile.TemporaryDirectory() as d:
        s, o, b = Path(d, "a.s"), Path(d, "a.o"), Path(d, "a.bin")
        s.write_text(f"{_DIRECTIVE[mode]}\n.text\n.globl _start\n_start:\n{source}\n")
        subprocess.run(["as", "--64", "-o", str(o), str(s)], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "-Ttext", hex(origin), "--oformat", "binary",
                        "-e", "_start", "-o", str(b), str(o)], check=True, capture_output=True)
        return b.read_bytes()
