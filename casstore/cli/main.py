"""The `casstore` command: a thin layer that parses options and calls the library.

Subcommands live in their own modules and are imported only when invoked (`--help` lists them
from SUMMARIES), so the CLI starts fast and never imports a cloud SDK it does not need.
"""

from __future__ import annotations

import gc
import importlib
import os
import select
import signal
import sys
from typing import NoReturn

import click

from casstore.errors import CasstoreError, ConfigError

# command name -> "module:function"; aliases point at the same function
COMMANDS = {
    "init": "casstore.cli.repo_commands:init",
    "snapshot": "casstore.cli.repo_commands:snapshot",
    "backup": "casstore.cli.repo_commands:backup",
    "list": "casstore.cli.read_commands:list_snapshots",
    "show": "casstore.cli.read_commands:show",
    "ls": "casstore.cli.read_commands:ls",
    "cat": "casstore.cli.read_commands:cat",
    "diff": "casstore.cli.read_commands:diff",
    "restore": "casstore.cli.read_commands:restore",
    "history": "casstore.cli.query_commands:history",
    "find": "casstore.cli.query_commands:find",
    "import-legacy": "casstore.cli.legacy_commands:import_legacy",
    "check": "casstore.cli.repo_commands:check",
    "stats": "casstore.cli.repo_commands:stats",
    "sync": "casstore.cli.remote_commands:sync",
    "pull": "casstore.cli.remote_commands:pull",
    "remote": "casstore.cli.remote_commands:remote_group",
    "forget": "casstore.cli.maint_commands:forget",
    "gc": "casstore.cli.maint_commands:gc",
    "status": "casstore.cli.service_commands:status",
    "serve": "casstore.cli.service_commands:serve",
    "schedule": "casstore.cli.service_commands:schedule",
    "cache": "casstore.cli.cache_commands:cache",
    "key": "casstore.cli.key_commands:key_group",
}


# one-line help per command, so `casstore --help` lists commands without importing them
SUMMARIES = {
    "init": "Create a new local repository.",
    "snapshot": "Take a snapshot of SOURCE (default: CASSTORE_SOURCE or ./data).",
    "backup": "Alias of `snapshot`.",
    "list": "List snapshots, newest first.",
    "show": "Show a snapshot's summary and list its files.",
    "ls": "Alias of `show`.",
    "cat": "Write one file of a snapshot to standard output.",
    "diff": "What changed between two snapshots.",
    "restore": "Restore a snapshot into a directory.",
    "history": "How a file, or a value inside a JSON file, changed across snapshots.",
    "find": "Which snapshots hold files whose names match a pattern.",
    "import-legacy": "Import the old system's unified_backup_*.json.gz files as snapshots.",
    "check": "Verify the repository's structure (and with --read-data, every byte).",
    "stats": "Stored vs logical bytes, dedup and compression ratios, monthly cost.",
    "sync": "Copy new local snapshots to the remote, uploading only what it lacks.",
    "pull": "Copy snapshots from the remote into the local repository.",
    "remote": "Manage the remote (create-bucket: a new bucket with secure defaults).",
    "forget": "Remove the given snapshots, or those a retention policy drops.",
    "gc": "Delete data no snapshot needs (lock-free on shared remotes).",
    "status": "Last snapshot, sync and scheduled run; non-zero when too old.",
    "serve": "Serve the HTTP API and dashboard.",
    "schedule": "Run snapshot, sync and retention on a schedule.",
    "cache": "Show, verify or clear the local cache of remote objects.",
    "key": "Manage the keys (passwords) of an encrypted repository.",
}


class LazyGroup(click.Group):
    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            summary = SUMMARIES.get(name)
            if summary is None:
                command = self.get_command(ctx, name)
                summary = command.get_short_help_str(70) if command else ""
            rows.append((name, summary))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attribute = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            if stdout_closed():   # the reader of our output stopped reading: not an error
                die_of_sigpipe()
            _os_error(exc)
        except CasstoreError as exc:
            click.echo(f"casstore: error: {_shown(exc)}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            _os_error(exc)
        except KeyboardInterrupt:
            click.echo("casstore: interrupted", err=True)
            sys.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", "repository", metavar="PATH", envvar=None,
              help="Local repository (default: CASSTORE_REPOSITORY or ./.casstore).")
@click.option("-v", "--verbose", is_flag=True, help="Log warnings and progress details to stderr.")
@click.version_option(package_name="casstore")
@click.pass_context
def cli(ctx: click.Context, repository: str | None, verbose: bool) -> None:
    """Content-addressed, deduplicated, compressed snapshots of a folder."""
    _start_collecting()   # the command's modules are imported by now (click resolves it first)
    import logging  # lazy: start-up time of `casstore --help`

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="casstore: %(message)s")
    ctx.obj = {"repository": repository}
    if sys.stdin.isatty():
        from casstore.repo import keys  # lazy: only a command that runs can need a password

        keys.set_prompt(_ask_password)


def _ask_password(what: str, new: bool) -> str:
    """A password typed at the terminal (not echoed); a new one is asked twice."""
    import getpass  # lazy: only at a terminal

    value = getpass.getpass(f"casstore: {what}: ")
    if new and getpass.getpass(f"casstore: {what} again: ") != value:
        raise ConfigError("the two passwords differ")
    if not value:
        raise ConfigError("an empty password is not accepted")
    return value


def _os_error(exc: OSError) -> NoReturn:
    where = f": {_shown(exc.filename)}" if exc.filename else ""
    click.echo(f"casstore: error: {_shown(exc.strerror or exc)}{where}", err=True)
    sys.exit(1)


def _shown(text: object) -> str:
    """An error's text as one terminal line: a path's bytes that are not UTF-8 as `\\xNN` and control
    characters escaped, as every listing shows them (an error may name any path or file name)."""
    from casstore.cli.common import printable  # lazy: only when an error is printed

    return printable(text)


def stdout_closed() -> bool:
    """True when standard output is a pipe whose reader has gone (`casstore ls | head`)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)   # POLLERR/POLLHUP are always reported
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):   # no real file descriptor (tests' CliRunner)
        return False


def die_of_sigpipe() -> NoReturn:
    """End as `cat`, `git` and the other Unix tools do when their reader stops reading: killed by
    SIGPIPE, silently (the shell shows nothing; the exit status is 141). Python ignores SIGPIPE
    so that network writes get an error instead; here, at the very end, its default is restored."""
    sys.stderr.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    os._exit(128 + signal.SIGPIPE)   # not reached


# Start-up (click, then the command's modules) makes tens of thousands of objects that live until
# exit, and the cyclic collector, run every 700 allocations, traversed them again and again: 3% of
# a no-change snapshot's instructions; the interpreter's collections at exit traversed them once
# more (4%). `main` holds the collector until the command's modules are imported, then freezes
# what start-up made (never traversed again) and lets it run as usual; at exit, frozen again.
_held = False


def _start_collecting() -> None:
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()


def main() -> None:
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True
    try:
        cli(prog_name="casstore", standalone_mode=True)
    except SystemExit:
        try:
            sys.stdout.flush()   # output buffered until exit meets the closed pipe here
        except BrokenPipeError:
            die_of_sigpipe()
        raise
    finally:
        _start_collecting()    # a command that never ran (usage error, --help)
        gc.freeze()            # the collections at exit need not traverse what lives until then


if __name__ == "__main__":
    main()
