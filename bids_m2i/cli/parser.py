"""The ``m2i`` command line (click), generated from the option table of :mod:`bids_m2i.config`.

BIDS-Apps pass several labels after one flag (``--participant-label 01 02``), which click does not do
natively: :func:`expand_multi_value_args` rewrites such argument lists into click's repeated form before
parsing. Positional arguments go first, as in every BIDS-App.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from .. import __version__
from ..config import FLOAT_OPTIONS_FROM_ZERO, OPTIONS, OptionSpec, int_maximum, int_minimum

ANALYSIS_LEVELS = ("participant", "group")

_MULTI_KINDS = ("list", "paths", "choices")


def _multi_value_flags() -> set[str]:
    return {flag for spec in OPTIONS if spec.kind in _MULTI_KINDS for flag in spec.cli_flags}


def expand_multi_value_args(args: list[str]) -> list[str]:
    """``--task a b --nprocs 2`` -> ``--task a --task b --nprocs 2``.

    Values are taken until the next token that starts with ``-``.
    """
    multi = _multi_value_flags()
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        flag, eq, inline = token.partition("=")
        if flag in multi:
            values = [inline] if eq else []
            j = i + 1
            while j < len(args) and not args[j].startswith("-"):
                values.append(args[j])
                j += 1
            if not values:
                out.append(token)  # let click report the missing value
            for value in values:
                out.extend([flag, value])
            i = j
            continue
        out.append(token)
        i += 1
    return out


class NonEmptyPath(click.Path):
    """A path that is not the empty string: ``-w "$WORKDIR"`` with the variable unset gave ``Path("")``, the
    current folder, and a later ``--clean-workdir`` emptied it (exit 64 instead)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path was given (is a shell variable unset?)", param, ctx)
        return super().convert(value, param, ctx)


class PositiveFiniteFloat(click.FloatRange):
    """A number > 0 (or >= 0 with ``from_zero``) that is finite: ``--mem-gb nan`` passed click's range check
    (every comparison with NaN is false) and failed after the preprocessing; ``inf`` crashed the GLM's memory
    plan (exit 1)."""

    def __init__(self, from_zero: bool = False):
        super().__init__(min=0, min_open=not from_zero)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _click_option(spec: OptionSpec):
    flags = spec.cli_flags
    common = {"help": spec.help, "default": None, "show_default": False}
    if spec.kind == "bool":
        if "/" in flags[0]:
            return click.option(*flags, spec.name, **common)
        return click.option(*flags, spec.name, is_flag=True, default=None, help=spec.help)
    if spec.kind == "count":
        return click.option(*flags, spec.name, count=True, help=spec.help)
    if spec.kind == "int":
        bounds = click.IntRange(min=int_minimum(spec.name), max=int_maximum(spec.name))
        return click.option(*flags, spec.name, type=bounds, **common)
    if spec.kind == "float":
        return click.option(*flags, spec.name, type=PositiveFiniteFloat(spec.name in FLOAT_OPTIONS_FROM_ZERO),
                            metavar=spec.metavar, **common)
    if spec.kind in ("str",):
        return click.option(*flags, spec.name, type=str, metavar=spec.metavar, **common)
    if spec.kind == "path":
        # readable=False: click would answer an unreadable file with a usage error (64); check_paths names it, 66
        return click.option(*flags, spec.name, type=NonEmptyPath(path_type=Path, readable=False),
                            metavar=spec.metavar, **common)
    if spec.kind == "choice":
        return click.option(*flags, spec.name, type=click.Choice(spec.choices), **common)
    if spec.kind == "list":
        return click.option(*flags, spec.name, multiple=True, metavar=spec.metavar, help=spec.help)
    if spec.kind == "paths":
        return click.option(*flags, spec.name, multiple=True, type=NonEmptyPath(path_type=Path, readable=False),
                            metavar=spec.metavar, help=spec.help)
    if spec.kind == "choices":
        return click.option(*flags, spec.name, multiple=True, type=click.Choice(spec.choices), help=spec.help)
    raise AssertionError(spec.kind)  # pragma: no cover


def cli_options(func):
    for spec in reversed(OPTIONS):
        func = _click_option(spec)(func)
    return func


EPILOG = """\b
Exit codes: 0 ok, 16 validation failed, 17 unknown analysis level, 18 filters select no data,
64 usage error, 65 bad data content, 66 input missing, 73 cannot create output,
74 I/O error during processing, 1 other failure.
Documentation: docs/usage.md (every option), docs/outputs.md, docs/exit-codes.md."""


def make_command(callback) -> click.Command:
    """Build the click command that calls ``callback(bids_dir, output_dir, analysis_level, config_file,
    values, given)`` where ``given`` is the set of options set on the command line."""

    @click.command(
        name="m2i",
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
        epilog=EPILOG,
    )
    @click.argument("bids_dir", type=NonEmptyPath(path_type=Path))
    @click.argument("output_dir", type=NonEmptyPath(path_type=Path))
    @click.argument("analysis_level", type=click.Choice(ANALYSIS_LEVELS), metavar="{participant,group}")
    @click.option("--config", "config_file", type=NonEmptyPath(path_type=Path, readable=False), default=None, metavar="FILE",
                  help="TOML file with option values (command line > file > defaults).")
    @cli_options
    @click.version_option(__version__, "--version", prog_name="m2i", message="%(prog)s %(version)s")
    @click.pass_context
    def command(ctx, bids_dir, output_dir, analysis_level, config_file, **values):
        """Reconstruct seen and imagined images from the fMRI of a BIDS dataset (a BIDS-App).

        BIDS_DIR is the input dataset, OUTPUT_DIR the derivatives dataset to write, and the analysis level is
        `participant` (one job per participant) or `group` (after all participants).
        """
        given = set()
        for name in values:
            source = ctx.get_parameter_source(name)
            if source is not None and source.name == "COMMANDLINE":
                given.add(name)
        normalized = {}
        for spec in OPTIONS:
            value = values[spec.name]
            if spec.kind in _MULTI_KINDS:
                value = list(value or [])
            normalized[spec.name] = value
        return callback(bids_dir, output_dir, analysis_level, config_file, normalized, given)

    return command
