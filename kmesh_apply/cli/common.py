"""Plumbing both command lines share: the --pin-root option and turning errors into one clear message.

A user mistake must never print a traceback: every KmeshError (and OSError,
which the kernel and filesystem raise) becomes `error: ...` on stderr and exit 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any, NoReturn, Optional

import typer

# Commands that read config files take the pin root from them too; the others (show, destroy, schema,
# every `kmesh map` command) have no file to take it from.
PinRootOption = Annotated[
    Optional[str],
    typer.Option("--pin-root", help="bpffs directory holding the maps [env: KMESH_PIN_ROOT; default: the file's pin_root, "
                                    "then /sys/fs/bpf/kmesh]", show_default=False),
]
PinRootNoFileOption = Annotated[
    Optional[str],
    typer.Option("--pin-root", help="bpffs directory holding the maps [env: KMESH_PIN_ROOT; default: /sys/fs/bpf/kmesh]",
                 show_default=False),
]
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


COMPLETION_OPTIONS = ("--install-completion", "--show-completion")


def _completion(install: bool) -> Any:
    """--install-completion / --show-completion SHELL (typer's own take no shell where the current one can be
    detected, and then print the current shell's script whatever is named); `run` supplies the current
    shell when none is named."""

    def callback(ctx: typer.Context, param: Any, value: Optional[str]) -> None:
        if value is None or ctx.resilient_parsing:
            return
        if value not in SHELLS:
            raise typer.BadParameter(f"{value!r} is not a shell: expected one of {', '.join(SHELLS)}")
        from typer import completion

        (completion.install_callback if install else completion.show_callback)(ctx, param, value)

    what = "Install completion for SHELL" if install else "Print the completion script of SHELL"
    return typer.Option(None, COMPLETION_OPTIONS[not install], metavar="[SHELL]", callback=callback, expose_value=False,
                        is_eager=True, show_default=False,
                        help=f"{what} ({', '.join(SHELLS[:3])}; default: the current shell).")


def _with_current_shell(argv: list[str]) -> list[str]:
    """The arguments with the current shell's name after a completion option that names none."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in COMPLETION_OPTIONS and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            from typer._completion_shared import _get_shell_name

            shell = _get_shell_name()
            if shell in SHELLS:
                out.append(shell)
    return out


def make_app(name: str, help: str) -> typer.Typer:
    """A typer app with the settings both command lines share: plain help, no pretty tracebacks,
    --version, and shell completion (--install-completion / --show-completion [SHELL] for bash, zsh, fish)."""
    from typer.completion import completion_init

    completion_init()  # the completion classes the scripts talk to (typer registers them only with its own options)
    app = typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                      pretty_exceptions_enable=False)

    @app.callback()
    def main(version: VersionOption = False, debug: DebugOption = False, install_completion: Optional[str] = _completion(True),
             show_completion: Optional[str] = _completion(False)) -> None:
        pass

    return app


def _print_version(ctx: typer.Context, value: bool) -> None:
    """Print the installed distribution's version and stop (the package metadata is the one source of it)."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version(DISTRIBUTION)
    except PackageNotFoundError:
        number = "unknown (not installed: no package metadata)"
    typer.echo(f"{ctx.info_name} {number}")
    raise typer.Exit()


DISTRIBUTION = "kmesh-apply"
VersionOption = Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                             is_eager=True)]


def _set_debug(value: bool) -> None:
    if value:
        from kmesh_apply.errors import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"


DebugOption = Annotated[bool, typer.Option("--debug", help="Print the traceback of an internal error (a bug) "
                                           "[env: KMESH_APPLY_DEBUG=1].", callback=_set_debug, is_eager=True)]


def json_text(doc: object) -> str:
    """A document as indented JSON: orjson (a million entries in 0.3 s, not 5 s with the json
    module's indenting encoder), or the json module for what orjson refuses (integers beyond 64 bits);
    characters a terminal would act on are escaped either way."""
    import orjson

    from kmesh_apply.terminal import escape_quoted

    try:
        return escape_quoted(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    except orjson.JSONEncodeError:
        import json

        return json.dumps(doc, indent=2)  # ensure_ascii: every character past ASCII is escaped


def say(text: object) -> None:
    """Print output for people: every line made printable (names and values may come from others)."""
    from kmesh_apply.terminal import printable_lines

    print(printable_lines(str(text)))


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line (or multi-line, for many diagnostics) error and exit 1."""
    raise typer.Exit(_print_error(message))


def _print_error(message: str) -> int:
    from kmesh_apply.terminal import printable_lines

    colour = sys.stderr.isatty()
    lines = printable_lines(message).split("\n")
    head = "\x1b[31merror:\x1b[0m" if colour else "error:"
    print(f"{head} {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}" if not line.startswith("  ") else line, file=sys.stderr)
    return 1


def _click_exception() -> type[Exception]:
    """click's base exception; recent typer releases vendor click as typer._click."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click import ClickException  # type: ignore[no-redef, assignment]
    return ClickException


def _raise_fd_limit() -> None:
    """An apply keeps one fd per map it touches (5,000 at Kmesh scale); systemd's and many shells'
    soft limit is 1,024, so take the hard limit, as a process may without privilege."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(app: typer.Typer) -> None:
    """Run a typer app, mapping the tool's errors to exit 1 with a message instead of a traceback;
    anything else is a bug, one line too (the traceback under --debug)."""
    from kmesh_apply.errors import DEBUG_ENV, KmeshError, debugging, internal_error

    _raise_fd_limit()
    try:
        # click returns an Exit's code instead of raising it here
        code = app(args=_with_current_shell(sys.argv[1:]), standalone_mode=False)
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(1)
    except KmeshError as e:
        sys.exit(_print_error(str(e)))
    except OSError as e:
        sys.exit(_print_error(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"))
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    except _click_exception() as e:  # usage errors: one line, like the tool's own errors
        ctx = getattr(e, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        sys.exit(_print_error(e.format_message() + where))  # type: ignore[attr-defined]
    except Exception as e:  # noqa: BLE001  (the guard of last resort)
        if debugging():
            from kmesh_apply.terminal import printable_lines

            print(printable_lines(traceback.format_exc()), file=sys.stderr, end="")
        sys.exit(_print_error(internal_error(e) + ("" if debugging() else
                                                   f"\n(for the traceback: {app.info.name} --debug ..., or {DEBUG_ENV}=1)")))
    sys.exit(code if isinstance(code, int) else 0)
