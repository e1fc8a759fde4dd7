"""Our layouts and encodings against the C compiler's: a small C program prints sizeof and
the bytes of each struct, and encode() must give exactly those bytes (no kernel needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import require_tool
from kmesh_apply.config.codecs import decode, encode
from kmesh_apply.ctype import parse_type

PROGRAM = r"""
#include <arpa/inet.h>
#include <linux/types.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

struct backend { __be32 ip; __be16 port; __u16 weight; };
struct padded { __u8 a; __u64 b; __u16 c; };
struct packed { __u8 a; __u64 b; __u16 c; } __attribute__((packed));
struct mixed { char name[6]; __u16 arr[3]; struct in6_addr ip6; __u8 mac[6]; };
struct lpm4 { __u32 prefixlen; __u8 addr[4]; };
struct sbits { __s8 a:3; __u16 b:12; __u8 c; __s32 d:20; _Bool e:1; };
struct pbits { __u8 a:3; __u16 b:12; __u32 c:30; } __attribute__((packed));
struct inner_packed { __u8 x; __u32 y; } __attribute__((packed));
enum colour { RED = 1, BLUE = 7 };
struct mix { __u8 tag; struct inner_packed p; union { __u16 s; __u64 l; } u; __u32 grid[2][3]; _Bool ok; enum colour c; };

static void show(const char *name, const void *p, size_t n)
{
    const unsigned char *b = p;
    printf("%s %zu ", name, n);
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
    printf("\n");
}

int main(void)
{
    struct backend be; struct padded pd; struct packed pk; struct mixed mx; struct lpm4 lp;
    struct sbits sb; struct pbits pb; struct mix mi;
    memset(&sb, 0, sizeof(sb)); memset(&pb, 0, sizeof(pb)); memset(&mi, 0, sizeof(mi));
    sb.a = -3; sb.b = 0xabc; sb.c = 9; sb.d = -70000; sb.e = 1;
    pb.a = 5; pb.b = 0x123; pb.c = 0x2345678;
    mi.tag = 1; mi.p.x = 2; mi.p.y = 0x01020304; mi.u.s = 0xbeef;
    for (int i = 0; i < 6; i++)
        mi.grid[i / 3][i % 3] = i + 1;
    mi.ok = 1; mi.c = BLUE;
    memset(&be, 0, sizeof(be)); memset(&pd, 0, sizeof(pd)); memset(&pk, 0, sizeof(pk));
    memset(&mx, 0, sizeof(mx)); memset(&lp, 0, sizeof(lp));

    inet_pton(AF_INET, "10.0.1.10", &be.ip);
    be.port = htons(8080);
    be.weight = 100;
    pd.a = 1; pd.b = 0x0102030405060708ULL; pd.c = 0xbeef;
    pk.a = 1; pk.b = 0x0102030405060708ULL; pk.c = 0xbeef;
    strcpy(mx.name, "abc");
    mx.arr[0] = 1; mx.arr[1] = 2; mx.arr[2] = 3;
    inet_pton(AF_INET6, "fd00::1", &mx.ip6);
    const __u8 mac[6] = {0x02, 0, 0, 0, 0, 0x01};
    memcpy(mx.mac, mac, 6);
    lp.prefixlen = 16;
    inet_pton(AF_INET, "10.96.0.0", lp.addr);

    show("backend", &be, sizeof(be));
    show("padded", &pd, sizeof(pd));
    show("packed", &pk, sizeof(pk));
    show("mixed", &mx, sizeof(mx));
    show("lpm4", &lp, sizeof(lp));
    show("sbits", &sb, sizeof(sb));
    show("pbits", &pb, sizeof(pb));
    show("mix", &mi, sizeof(mi));
    return 0;
}
"""

PADDED = [{"a": "u8"}, {"b": "u64"}, {"c": "u16"}]
ABC = {"a": 1, "b": 0x0102030405060708, "c": 0xBEEF}
CASES: dict[str, tuple[Any, Any]] = {
    "backend": ({"struct": [{"ip": "ipv4"}, {"port": "be16"}, {"weight": "u16"}]},
                {"ip": "10.0.1.10", "port": 8080, "weight": 100}),
    "padded": ({"struct": PADDED}, ABC),
    "packed": ({"struct": PADDED, "packed": True}, ABC),
    "mixed": ({"struct": [{"name": "char[6]"}, {"arr": "u16[3]"}, {"ip6": "ipv6"}, {"mac": "mac"}]},
              {"name": "abc", "arr": [1, 2, 3], "ip6": "fd00::1", "mac": "02:00:00:00:00:01"}),
    "lpm4": ({"lpm": "ipv4"}, "10.96.0.0/16"),
    "sbits": ({"struct": [{"a": "i8:3"}, {"b": "u16:12"}, {"c": "u8"}, {"d": "i32:20"}, {"e": "bool:1"}]},
              {"a": -3, "b": 0xABC, "c": 9, "d": -70000, "e": True}),
    "pbits": ({"struct": [{"a": "u8:3"}, {"b": "u16:12"}, {"c": "u32:30"}], "packed": True},
              {"a": 5, "b": 0x123, "c": 0x2345678}),
    "mix": ({"struct": [{"tag": "u8"}, {"p": {"struct": [{"x": "u8"}, {"y": "u32"}], "packed": True}},
                        {"u": {"union": [{"s": "u16"}, {"l": "u64"}]}}, {"grid": "u32[2][3]"}, {"ok": "bool"},
                        {"c": {"enum": "u32", "values": {"RED": 1, "BLUE": 7}}}]},
            {"tag": 1, "p": {"x": 2, "y": 0x01020304}, "u": {"s": 0xBEEF}, "grid": [[1, 2, 3], [4, 5, 6]], "ok": True,
             "c": "BLUE"}),
}


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """{struct name: (sizeof, hex bytes)} as the C compiler lays them out."""
    work: Path = tmp_path_factory.mktemp("layout_c")
    (work / "layout.c").write_text(PROGRAM)
    subprocess.run([require_tool("clang-14"), "-O0", "-Wall", "-Werror", "-o", str(work / "layout"), str(work / "layout.c")],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True).stdout
    layouts = {}
    for line in out.splitlines():
        name, size, hexbytes = line.split()
        layouts[name] = (int(size), hexbytes)
    assert set(layouts) == set(CASES)
    return layouts


@pytest.mark.parametrize("name", list(CASES))
def test_encode_matches_c_compiler(name: str, c_layouts: dict[str, tuple[int, str]]) -> None:
    spec, value = CASES[name]
    typ = parse_type(spec)
    size, hexbytes = c_layouts[name]
    assert typ.size == size
    assert encode(typ, value).hex() == hexbytes
    assert decode(typ, bytes.fromhex(hexbytes)) == value
