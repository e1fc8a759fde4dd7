"""C headers (and .c files) named under `btf:`, compiled to BTF with clang so that every type they
declare can be used by name, with no companion BPF object.

clang writes BTF only for the types a translation unit uses, so a header is compiled twice: once
to LLVM IR with `-fno-eliminate-unused-debug-types`, whose debug metadata lists every named
typedef, struct, union and enum the header declares (its includes too), then once more for BPF
with one pointer global per type (`frontend_key *__kmesh_apply_t0;`), which makes clang describe
each of them in the object's `.BTF` section. Both runs take about 0.05 s for a small header.

The BTF is cached (the config cache's directory, its rules: one of the current user's, written
aside and renamed into place) under the compiler, its arguments and the header's path, together
with a digest of every file the compile read (`-MD`), so an edited header or any header it
includes is compiled again and an unchanged one is not.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kmesh_apply.config.cache import Cache

C_SUFFIXES = (".h", ".c")
# clang found on PATH under these names, in this order (Debian installs versioned names only).
CLANG_NAMES = ("clang", *(f"clang-{v}" for v in range(30, 10, -1)))
COMPILE_SECONDS = 120
_REF_PREFIX = "__kmesh_apply_t"
_NAMED = re.compile(r'^!\d+ = (?:distinct )?!DI(?:Derived|Composite)Type\(tag: DW_TAG_(typedef|structure_type|union_type|'
                    r'enumeration_type), name: "([A-Za-z_][A-Za-z0-9_]*)"(.*)\)$', re.M)
_WORDS = {"typedef": "", "structure_type": "struct ", "union_type": "union ", "enumeration_type": "enum "}


class HeaderError(Exception):
    """A header that cannot be turned into BTF; the message says why and what to do."""


@dataclass(frozen=True)
class Header:
    """One `btf:` item that is C: the file (absolute), include directories (absolute) and defines."""

    path: str
    include: tuple[str, ...] = ()
    defines: tuple[tuple[str, str | None], ...] = ()

    @staticmethod
    def from_item(item: str | dict[str, Any], base: Path) -> "Header":
        """A `btf:` item (a path ending in .h or .c, or {header, include, defines}), relative to `base`."""
        if isinstance(item, str):
            return Header(os.path.abspath(base / item))
        defines = tuple((name, None if value is None else _define_text(value))
                        for name, value in (item.get("defines") or {}).items())
        return Header(os.path.abspath(base / item["header"]),
                      tuple(os.path.abspath(base / d) for d in item.get("include") or ()), defines)

    def describe(self, clang: str | None = None) -> str:
        return f"{self.path} (compiled with {os.path.basename(clang)})" if clang else self.path


def is_c(item: Any) -> bool:
    """Whether a `btf:` item names C to compile rather than a BPF object or BTF file."""
    return isinstance(item, dict) or (isinstance(item, str) and item.endswith(C_SUFFIXES))


def _define_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def find_clang() -> str | None:
    """The clang to compile with: `clang` on PATH, else the newest `clang-N`."""
    for name in CLANG_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _multiarch_include() -> list[str]:
    """Debian keeps <asm/types.h>, which <linux/types.h> includes, in /usr/include/<triplet>: searched
    last, as BPF builds usually add it by hand."""
    triplet = sysconfig.get_config_var("MULTIARCH")
    where = f"/usr/include/{triplet}" if triplet else ""
    return ["-idirafter", where] if where and os.path.isdir(where) else []


def _flags(header: Header) -> list[str]:
    flags = ["-g", "-target", "bpf", "-fno-caret-diagnostics", "-Wno-everything", "-Wno-error"]
    for d in header.include:
        flags += ["-I", d]
    for name, value in header.defines:
        flags.append(f"-D{name}" if value is None else f"-D{name}={value}")
    return flags + _multiarch_include()


def compile_btf(header: Header, cache: Cache | None) -> tuple[bytes, str]:
    """The raw BTF of every named type `header` declares, and the clang that made it; raises HeaderError."""
    from kmesh_apply.kernel.btf import BtfFileError, object_btf

    clang = find_clang()
    if clang is None:
        raise HeaderError(f"{header.path} is C: turning it into BTF needs clang (clang or clang-N on PATH), which is not "
                          "installed (Debian: apt-get install clang), or name a BPF object built with clang -g instead")
    if not os.path.isfile(header.path):
        raise HeaderError(f"{header.path}: no such file")
    key = _cache_key(clang, header)
    if cache is not None:
        hit = cache.read_blob(key)
        if _fresh(hit):
            return hit[1], clang
    with tempfile.TemporaryDirectory(prefix="kmesh-apply-btf-") as work:
        source = Path(work, "types.c")
        source.write_text(f'#include "{header.path}"\n')
        ir = _run(clang, header, [*_flags(header), "-fno-eliminate-unused-debug-types", "-S", "-emit-llvm",
                                  "-MD", "-MF", str(Path(work, "deps")), "-o", "-", str(source)])
        names = sorted({_WORDS[tag] + name for tag, name, rest in _NAMED.findall(ir) if "scope:" not in rest})
        refs = "".join(f"{name} *{_REF_PREFIX}{i};\n" for i, name in enumerate(names))
        source.write_text(f'#include "{header.path}"\n{refs}')
        obj = Path(work, "types.o")
        _run(clang, header, [*_flags(header), "-c", "-o", str(obj), str(source)])
        try:
            btf = object_btf(str(obj))
        except BtfFileError as e:
            raise HeaderError(f"{header.path}: clang wrote no usable BTF ({e})") from None
        deps = _dependencies(Path(work, "deps").read_text(), work)
    if cache is not None:
        cache.write_blob(key, (deps, btf))
    return btf, clang


def _run(clang: str, header: Header, argv: list[str]) -> str:
    try:
        res = subprocess.run([clang, *argv], capture_output=True, text=True, timeout=COMPILE_SECONDS)
    except subprocess.TimeoutExpired:
        raise HeaderError(f"{header.path}: {os.path.basename(clang)} took more than {COMPILE_SECONDS} s") from None
    except OSError as e:
        raise HeaderError(f"{header.path}: cannot run {clang}: {e.strerror}") from None
    if res.returncode != 0:
        errors = [ln for ln in res.stderr.splitlines() if " error: " in ln] or res.stderr.splitlines()[-1:]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        hint = "; give its directory under include:" if any("file not found" in e for e in errors) else ""
        raise HeaderError(f"{header.path} does not compile with {os.path.basename(clang)}: "
                          + "; ".join(errors[:3]) + more + hint)
    return res.stdout


def _cache_key(clang: str, header: Header) -> str:
    """What a compile's outcome depends on besides the files it reads: the compiler (its path and
    its file's identity, so an upgrade compiles again) and the arguments."""
    st = os.stat(clang)
    h = hashlib.sha256(repr((os.path.realpath(clang), st.st_size, st.st_mtime_ns, header, _multiarch_include())).encode())
    return "btf-" + h.hexdigest()[:32]


def _digest(path: str) -> bytes | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return None


def _dependencies(make_rule: str, work: str) -> list[tuple[str, bytes | None]]:
    """Every file the compile read (clang's -MD rule, less our own wrapper), with its digest."""
    body = make_rule.split(":", 1)[1] if ":" in make_rule else ""
    paths = [p.replace("\\ ", " ") for p in re.split(r"(?<!\\)\s+", body.replace("\\\n", " ")) if p and p != "\\"]
    return [(os.path.abspath(p), _digest(p)) for p in paths if not p.startswith(work)]


def _fresh(hit: Any) -> bool:
    """Whether a cached compile is still what compiling again would give: every file it read unchanged."""
    if not (isinstance(hit, tuple) and len(hit) == 2 and isinstance(hit[0], list) and isinstance(hit[1], bytes)):
        return False
    return all(isinstance(d, tuple) and len(d) == 2 and d[1] is not None and _digest(d[0]) == d[1] for d in hit[0])
