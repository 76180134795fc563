"""The `casstore` command: a thin layer that parses options and calls the library.

Subcommands live in their own modules and are imported only when invoked (or listed by
`--help`), so the CLI starts fast and never imports a cloud SDK it does not need.
"""

from __future__ import annotations

import importlib
import sys

import click

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
    "check": "casstore.cli.repo_commands:check",
    "stats": "casstore.cli.repo_commands:stats",
    "sync": "casstore.cli.remote_commands:sync",
    "pull": "casstore.cli.remote_commands:pull",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attribute = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        from casstore.errors import CasstoreError

        try:
            return super().invoke(ctx)
        except CasstoreError as exc:
            click.echo(f"casstore: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            click.echo(f"casstore: error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                       err=True)
            sys.exit(1)
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
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="casstore: %(message)s")
    ctx.obj = {"repository": repository}


def main() -> None:
    cli(prog_name="casstore")


if __name__ == "__main__":
    main()
