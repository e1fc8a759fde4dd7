"""Test helper: build a small C program that prints the bytes of values as C lays them out
(`show("name", &value, sizeof(value))` prints `name <hex>`), run it, and return {name: hex}."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import require_tool

SHOW = r"""
#include <stdio.h>

static void show(const char *name, const void *p, size_t n)
{
    const unsigned char *b = p;
    printf("%s ", name);
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
    printf("\n");
}
"""


def c_bytes(work: Path, main: str) -> dict[str, str]:
    """Compile SHOW + `main` (a C translation unit's rest, which may include headers in `work`)."""
    cc = require_tool("clang-14")  # the compiler scripts/setup installs (for BPF too); `cc` may be missing
    (work / "show_bytes.c").write_text(SHOW + main)
    subprocess.run([cc, "-Wall", "-Werror", "-I", str(work), "-o", str(work / "show_bytes"),
                    str(work / "show_bytes.c")], check=True, capture_output=True)
    out = subprocess.run([str(work / "show_bytes")], check=True, capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines())
