"""Coverage-guided fuzzing of the hostile-input readers with atheris (libFuzzer), by hand; the suite's
bounded fuzzing is tests/test_fuzz.py (hypothesis). atheris is not a dependency: install it into the
virtualenv first.

    .venv/bin/pip install atheris
    .venv/bin/python tests/atheris_fuzz.py yaml -max_total_time=600 -timeout=2
    .venv/bin/python tests/atheris_fuzz.py json -max_total_time=600 -timeout=2
    .venv/bin/python tests/atheris_fuzz.py btf -max_total_time=600 -timeout=2

Any exception but the readers' own errors is a crash, and an input running past -timeout a hang;
libFuzzer writes either to crash-*/timeout-* in the working directory. The seeds are test_fuzz's.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["kmesh_apply"]):
    from kmesh_apply.config import load_config
    from kmesh_apply.errors import ConfigError
    import kmesh_apply.kernel.btf  # noqa: F401 (instrumented before test_fuzz imports it)

from test_fuzz import JSON_SEEDS, SEED_BTF, YAML_SEEDS, read_btf  # noqa: E402

WORK = Path(tempfile.mkdtemp(prefix="kmesh-atheris-"))


def config(suffix: str):
    path = WORK / f"c{suffix}"

    def one(data: bytes) -> None:
        path.write_bytes(data)
        try:
            load_config([path])
        except ConfigError:
            pass

    return one


def btf(data: bytes) -> None:
    path = WORK / "types.btf"
    path.write_bytes(data)
    read_btf(path)


TARGETS = {"yaml": (config(".yaml"), [s.encode() for s in YAML_SEEDS]),
           "json": (config(".json"), [s.encode() for s in JSON_SEEDS]),
           "btf": (btf, [SEED_BTF])}


def main() -> None:
    target, seeds = TARGETS[sys.argv[1]]
    corpus = WORK / f"corpus-{sys.argv[1]}"
    corpus.mkdir()
    for i, seed in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *sys.argv[2:], str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
