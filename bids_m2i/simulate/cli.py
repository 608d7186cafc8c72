"""``m2i-simulate OUTPUT_DIR [--preset demo|tiny|nsd-like] [--subjects N] [--seed S] [--runs R] ...``

Errors are printed as one message (no traceback) and the process exits with the BIDS-Apps code of
:mod:`bids_m2i.errors` (64 usage, 73 cannot create output, 74 I/O, 1 other).
"""

from __future__ import annotations

import logging
import sys
import time

import click

from ..errors import M2IError, UsageError
from .presets import PRESETS

log = logging.getLogger("m2i.simulate")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="demo", show_default=True,
              help="tiny: for tests (a few MB); demo: the README's example; nsd-like: benchmark scale (slow).")
@click.option("--subjects", type=click.IntRange(min=1), default=None, help="Number of participants (01, 02, ...).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed -> byte-identical files.")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Perception runs per session.")
@click.option("--imagery-runs", type=click.IntRange(min=0), default=None, help="Imagery runs per session.")
@click.option("--sessions", type=click.IntRange(min=1), default=None, help="Sessions per participant.")
@click.option("--no-motion", is_flag=True, help="Simulate a perfectly still head.")
@click.option("--no-slice-timing", is_flag=True, help="Acquire every slice at the volume onset.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT_DIR if it holds an earlier simulated dataset.")
@click.option("-v", "--verbose", count=True, help="More log messages (repeatable).")
def _command(output_dir, preset, subjects, seed, runs, imagery_runs, sessions, no_motion, no_slice_timing,
             overwrite, verbose):
    """Write a simulated BIDS dataset of seeing and imagining, with its ground truth in
    OUTPUT_DIR/derivatives/simulation."""
    from .dataset import simulate_dataset

    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    start = time.monotonic()
    overrides = {"imagery_runs": imagery_runs, "sessions": sessions}
    if no_slice_timing:
        overrides["slice_timing"] = False
    path = simulate_dataset(output_dir, preset=preset, subjects=subjects, seed=seed, runs=runs,
                            motion=not no_motion, overwrite=overwrite, **overrides)
    click.echo(f"Simulated dataset ({preset}, seed {seed}) written to {path} in {time.monotonic() - start:.1f} s; "
               f"ground truth in {path / 'derivatives' / 'simulation'}")


def main(argv=None) -> int:
    """Console entry point: run the command, map every failure to an exit code without a traceback."""
    try:
        _command.main(args=argv, prog_name="m2i-simulate", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as exc:  # usage errors: wrong option, bad value
        exc.show()
        return UsageError.exit_code
    except M2IError as exc:
        click.echo(f"m2i-simulate: error: {exc}", err=True)
        return exc.exit_code
    except OSError as exc:
        from ..errors import error_from_oserror

        error = error_from_oserror(exc)
        click.echo(f"m2i-simulate: error: {error}", err=True)
        return error.exit_code
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback
        log.debug("unexpected failure", exc_info=True)
        click.echo(f"m2i-simulate: unexpected error: {exc.__class__.__name__}: {exc}", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
