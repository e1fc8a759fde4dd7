"""Docs that cannot drift (issue 24): every code block of README.md and docs/ runs here, page by page,
as a reader working through the page would run it.

- `sh` blocks run in bash (`set -e`, as a careful reader runs them), one shell session per page: variables, `cd` and exports carry from one
  block to the next; the session starts in a scratch directory holding a copy of `examples/`, with
  the virtualenv's tools on PATH (as the getting-started page has the reader set it up).
- `python` blocks run in one namespace per page, in that directory.
- `yaml` and `json` blocks are parsed; a block whose top-level keys are a configuration's is
  validated as one (written in that directory, so `btf:` paths resolve as they would for the reader).
- The default pin root, /sys/fs/bpf/kmesh, stands for a scratch pin root of the test's own
  (also $KMESH_PIN_ROOT), so the docs show the paths a reader uses and no test touches the real one.
- A block in any other language, or one that is deliberately illustrative, is preceded by an HTML
  comment `<!-- illustrative: why -->`, which the site does not show; such blocks are rare (capped below).

`mkdocs build --strict` builds the site with every internal link and anchor checked, and README's
relative links must lead to files that exist. Nothing is fetched from the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from sybil import Document, Example
from sybil.parsers.markdown import CodeBlockParser

from conftest import REPO, _unique_root

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
RUN = ("sh", "python", "yaml", "json")
MAX_ILLUSTRATIVE = 8
DEFAULT_ROOT = re.compile(r"/sys/fs/bpf/kmesh(?![\w.-])")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$", re.M)
ILLUSTRATIVE = re.compile(r"<!--\s*illustrative:\s*(?P<why>\S[^>]*?)\s*-->\s*\Z")
BLOCK_SECONDS = 300
VENV_BIN = Path(sys.executable).parent


def _config_keys() -> set[str]:
    from kmesh_apply.config.validate import schema

    return set(schema()["properties"])


def _illustrative(text: str, start: int) -> str | None:
    """Why the block starting at `start` is not run, if the line before it says so."""
    m = ILLUSTRATIVE.search(text[:start].rstrip("\n ") + "\n")
    return m.group("why") if m else None


class Session:
    """One reader working through one page: a scratch directory, a scratch pin root standing for
    the default one, a shell whose state carries from block to block, a Python namespace."""

    def __init__(self, tmp: Path, pin_root: Path):
        self.tmp, self.pin_root = tmp, pin_root
        self.cwd = tmp / "work"
        shutil.copytree(REPO / "examples", self.cwd / "examples", ignore=shutil.ignore_patterns("*.o", "__pycache__"))
        (tmp / "home").mkdir()
        self.state = tmp / "shell-state"
        self.env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "KMESH_PIN_ROOT": str(pin_root),
                    "HOME": str(tmp / "home"), "KMESH_APPLY_CACHE_DIR": str(tmp / "cache")}
        self.env.pop("PYTHONPATH", None)
        exports = "".join(f"export {k}={_quote(v)}\n" for k, v in self.env.items() if re.fullmatch(r"[A-Za-z_]\w*", k))
        self.state.write_text(f"{exports}cd {_quote(str(self.cwd))}\n")

    def concrete(self, source: str) -> str:
        return DEFAULT_ROOT.sub(str(self.pin_root), source)

    def sh(self, example: Example) -> str | None:
        if _illustrative(example.document.text, example.start):
            return None
        state = _quote(str(self.state))
        script = (f"set -e\nsource {state}\nset -u\n{self.concrete(example.parsed)}\n"
                  f"{{ export -p | grep -v '^declare -[a-zA-Z]*r'; printf 'cd %q\\n' \"$PWD\"; }} > {state}\n")
        # A process group of its own: whatever the block leaves running is stopped with it.
        proc = subprocess.Popen(["bash", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.cwd, start_new_session=True)
        try:
            out, err = proc.communicate("yes\n" * 50, timeout=BLOCK_SECONDS)
        except subprocess.TimeoutExpired:
            out, err = "", f"the block ran for more than {BLOCK_SECONDS} s"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
        if proc.returncode != 0:
            return f"exit {proc.returncode}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
        return None

    def python(self, example: Example) -> str | None:
        if _illustrative(example.document.text, example.start):
            return None
        code = compile(self.concrete(example.parsed), f"{example.path}:{example.line}", "exec")
        with _inside(self.cwd, KMESH_PIN_ROOT=str(self.pin_root), KMESH_APPLY_CACHE_DIR=str(self.tmp / "cache")):
            exec(code, example.namespace)
        return None

    def data(self, example: Example, language: str) -> str | None:
        if _illustrative(example.document.text, example.start):
            return None
        text = self.concrete(example.parsed)
        try:
            docs = [json.loads(text)] if language == "json" else list(yaml.safe_load_all(text))
        except (ValueError, yaml.YAMLError) as e:
            return f"not valid {language}: {e}"
        if len(docs) == 1 and isinstance(docs[0], dict) and docs[0] and set(docs[0]) <= _config_keys():
            from kmesh_apply.config import load_config
            from kmesh_apply.errors import ConfigError

            block = self.cwd / f".docs-block-{example.line}.{language}"
            block.write_text(text)
            try:
                with _inside(self.cwd, KMESH_APPLY_CACHE_DIR=str(self.tmp / "cache")):
                    load_config([block])
            except ConfigError as e:
                return f"not a valid configuration:\n{e}"
            finally:
                block.unlink()
        return None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@contextlib.contextmanager
def _inside(cwd: Path, **env: str) -> Iterator[None]:
    """Run in `cwd` with these environment variables, as the reader's shell would have them."""
    before_cwd, before_env = os.getcwd(), {k: os.environ.get(k) for k in env}
    os.chdir(cwd)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(before_cwd)
        for k, v in before_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parse(page: Path, session: Session) -> Document:
    parsers: list[Any] = [CodeBlockParser("sh", session.sh), CodeBlockParser("python", session.python)]
    parsers += [CodeBlockParser(lang, lambda ex, lang=lang: session.data(ex, lang)) for lang in ("yaml", "json")]
    return Document.parse(str(page), *parsers)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_of_the_page_runs(page: Path, tmp_path: Path) -> None:
    with _unique_root("docs") as pin_root:
        session = Session(tmp_path, pin_root)
        for example in _parse(page, session):
            example.evaluate()


def _blocks() -> list[tuple[Path, int, str, str | None]]:
    """Every fenced block: (page, line, language, why it is illustrative or None)."""
    out = []
    for page in PAGES:
        text = page.read_text()
        close: str | None = None
        for m in FENCE.finditer(text):
            if close is None:
                language = m.group("info").strip().split(" ")[0]
                out.append((page, text.count("\n", 0, m.start()) + 1, language, _illustrative(text, m.start())))
                close = m.group("fence")
            elif m.group("fence").startswith(close) and not m.group("info").strip():
                close = None
    return out


def test_every_block_runs_or_says_why_it_does_not() -> None:
    """A block in a language the runner does not run must say it is illustrative, and few may."""
    unmarked = [f"{p.relative_to(REPO)}:{line}: ```{lang}" for p, line, lang, why in _blocks() if lang not in RUN and why is None]
    assert not unmarked, "blocks the docs tests cannot run and that do not say why:\n" + "\n".join(unmarked)
    marked = [f"{p.relative_to(REPO)}:{line}: {why}" for p, line, _, why in _blocks() if why is not None]
    assert len(marked) <= MAX_ILLUSTRATIVE, "too many illustrative blocks:\n" + "\n".join(marked)


def test_the_site_builds_with_every_link_and_anchor_resolved(tmp_path: Path) -> None:
    res = subprocess.run([str(VENV_BIN / "mkdocs"), "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
                          "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "index.html").exists()


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def test_the_readme_links_lead_somewhere() -> None:
    """README's relative links name files of the repository (the site checks its own); web links are
    left alone: nothing is fetched."""
    text = (REPO / "README.md").read_text()
    for m in LINK.finditer(text):
        target = m.group("target")
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (REPO / target.split("#")[0]).exists(), f"README links to {target}, which does not exist"
