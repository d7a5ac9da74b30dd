"""`selfplay` entry point.

Subcommands live in `selfplay.commands.*` and are imported only when invoked,
so `selfplay --help` stays instant (no torch, ray or mlflow import).
Any `InputError` becomes one line on stderr and exit status 2 (so does a click
usage error: an unknown option, a value of the wrong type), a `RunError` one line
and exit status 1.
"""

from __future__ import annotations

import importlib
import math
import sys

import click

from selfplay.errors import InputError, RunError

# name -> (module, attribute, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "game": ("selfplay.commands.game", "game", "Run algorithms on a matrix preference game."),
    "eval": ("selfplay.commands.eval", "eval_cmd", "Win rates, league Nash and exploitability."),
    "train": ("selfplay.commands.train", "train", "Train a policy from a YAML config on Ray."),
    "bench": (
        "selfplay.commands.bench",
        "bench",
        "Benchmarks: `games`, `pipeline`, `scale` and `trl`.",
    ),
    "demo": ("selfplay.commands.demo", "demo", "Offline demo models and prompts: `text`."),
    "submit": ("selfplay.commands.jobs", "submit", "Submit a training run as a Ray job."),
    "status": ("selfplay.commands.jobs", "status", "Status of a submitted Ray job."),
    "logs": ("selfplay.commands.jobs", "logs", "Logs of a submitted Ray job."),
    "stop": ("selfplay.commands.jobs", "stop", "Stop a submitted Ray job."),
    "export": (
        "selfplay.commands.export",
        "export",
        "Write a run's model/ from its newest checkpoint.",
    ),
    "scale": ("selfplay.commands.scale", "scale", "Resize a running job's rollout workers."),
}


class FiniteFloat(click.ParamType):
    """A float option that refuses NaN and ±inf (which `type=float` lets through),
    as an `InputError`: one line, exit status 2. Every float option uses it."""

    name = "float"

    def convert(self, value, param, ctx) -> float:
        flag = param.opts[0] if param is not None and param.opts else "value"
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{flag} must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise InputError(f"{flag} must be a finite number, got {value}")
        return v


FINITE_FLOAT = FiniteFloat()


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        mod, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(mod), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, _COMMANDS[n][2]) for n in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="selfplay")
def cli() -> None:
    """selfplay: Nash learning from human feedback on Ray."""


# click >= 8.2 raises this (a UsageError) for a group called without a subcommand.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, standalone_mode=False)
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except RunError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except _NO_ARGS_IS_HELP as e:  # `selfplay` or `selfplay bench` alone: the help
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:  # a bad option or argument: one line too
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
