"""``m2i`` entry point: arguments -> config -> workflow -> exit code.

Every failure becomes a message that names the file and what to do, and a BIDS-Apps exit code
(``bids_m2i.errors``). Tracebacks go to ``OUTPUT_DIR/logs/``, never to the terminal.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from ..errors import M2IError, UnknownAnalysisLevel, UsageError
from .parser import expand_multi_value_args, make_command

LOGGER = logging.getLogger("m2i.cli")


def main(argv: list[str] | None = None) -> None:
    """Console script ``m2i``."""
    code = run_cli(argv)
    from ..utils.process import skip_exit_gc

    skip_exit_gc()  # the run is over: no 0.3-0.5 s of garbage collection while the interpreter shuts down
    sys.exit(code)


def run_cli(argv: list[str] | None = None) -> int:
    args = expand_multi_value_args(list(sys.argv[1:] if argv is None else argv))
    command = make_command(_run_from_cli)
    try:
        result = command.main(args, prog_name="m2i", standalone_mode=False)
    except click.exceptions.BadParameter as exc:
        param = getattr(exc, "param", None)
        if param is not None and param.name == "analysis_level":
            _print_error(UnknownAnalysisLevel(f"Unknown analysis level: {exc.format_message()}",
                                              hint="use `participant` or `group`"))
            return UnknownAnalysisLevel.exit_code
        return _usage_error(exc)
    except click.exceptions.UsageError as exc:
        return _usage_error(exc)
    except click.exceptions.Abort:
        click.echo("m2i: interrupted", err=True)
        return 130
    except click.exceptions.ClickException as exc:
        return _usage_error(exc)
    return int(result or 0)


def _usage_error(exc: click.exceptions.ClickException) -> int:
    ctx = getattr(exc, "ctx", None)
    usage = ctx.get_usage() + "\n" if ctx is not None else ""
    click.echo(f"{usage}m2i: error: {exc.format_message()}\nTry 'm2i --help' for the options.", err=True)
    return UsageError.exit_code


def _print_error(error: M2IError) -> None:
    click.echo(f"m2i: error: {error}", err=True)


class _Terminated(BaseException):
    """Raised in the main process on SIGTERM so that the run stops cleanly. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way (nipype's, ours) mistakes it for a failure."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by the interruption tests
    raise _Terminated(signum)


def _catch_hangup():
    """SIGHUP (the ssh session or terminal of an interactive run closed) stops the run as SIGTERM does, with a
    line in the log: by default it killed the run at once, its log ending mid-step, a file being written left as
    a temporary. Not under ``nohup`` (SIGHUP ignored: the run goes on, as the user asked). Returns the handler
    to restore, or None."""
    if not hasattr(signal, "SIGHUP") or signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGHUP, _on_sigterm)


def _run_from_cli(bids_dir, output_dir, analysis_level, config_file, values, given) -> int:
    _LOG_FILE[0] = _FOOTPRINT[0] = None  # an earlier run in this process (tests) must not lend its log
    code = _run_and_report(bids_dir, output_dir, analysis_level, config_file, values, given)
    footprint = _FOOTPRINT[0]
    if code != 0 and footprint is not None:
        # a failed group run takes back what it created; an unexpected failure (1) keeps its log: the traceback
        footprint.undo(keep_log=code == 1)
    return code


def _run_and_report(bids_dir, output_dir, analysis_level, config_file, values, given) -> int:
    from ..config import build_config
    from ..utils.logs import close_handlers, setup_terminal_logging

    setup_terminal_logging(values.get("verbose") or 0)
    log_file = None
    previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_hangup = _catch_hangup()
    try:
        config = build_config(bids_dir, output_dir, analysis_level, values, given, config_file)
        from .runner import run

        return run(config, on_log_file=_remember, on_footprint=lambda footprint: _FOOTPRINT.__setitem__(0, footprint))
    except M2IError as error:
        LOGGER.debug("failure", exc_info=True)
        _print_error(error)
        log_file = _LOG_FILE[0]
        if log_file and _FOOTPRINT[0] is None:  # a failed group run removes its log (the message says it all)
            click.echo(f"m2i: details in {log_file}", err=True)
        return error.exit_code
    except _Terminated as stop:
        signum = stop.args[0] if stop.args else signal.SIGTERM
        if signum == getattr(signal, "SIGHUP", None):
            LOGGER.warning("Hangup (SIGHUP: the terminal or ssh session closed): finished steps are kept in the work "
                           "dir; rerun with the same work dir to resume (in nohup, tmux or a batch job)")
        else:
            LOGGER.warning("Terminated (SIGTERM): finished steps are kept in the work dir; rerun with the same "
                           "work dir to resume")
        return 128 + int(signum)
    except KeyboardInterrupt:
        LOGGER.warning("Interrupted: rerun with the same work dir to resume")
        return 130
    except PermissionError as exc:  # one that no stage turned into its own message
        from ..errors import error_from_oserror, unreadable_input_error
        from ..utils.paths import denied_on_read, is_inside

        LOGGER.debug("permission denied", exc_info=True)
        where = getattr(exc, "filename", None)
        in_dataset = where is not None and is_inside(where, bids_dir)
        if in_dataset:
            from ..bids.layout import first_unreadable

            where = first_unreadable(where, bids_dir)
            error = error_from_oserror(exc, where, writing=False)
        elif where is not None and denied_on_read(where, (output_dir, values.get("work_dir"))):
            # another input (models, fMRIPrep's outputs, a settings file) that no stage named: 66, not 73
            error = unreadable_input_error(where, hint="make it readable by this user (e.g. `chmod -R a+rX` on it "
                                           "or the folder above, or use a copy of your own); m2i only reads it")
        else:
            error = error_from_oserror(exc, where, writing=True)
        _print_error(error)
        return error.exit_code
    except Exception as exc:  # the last resort: never a traceback on the terminal
        LOGGER.debug("unexpected failure", exc_info=True)
        log_file = _LOG_FILE[0]
        where = f" (traceback in {log_file})" if log_file else ""
        click.echo(f"m2i: error: unexpected failure: {type(exc).__name__}: {exc}{where}\n"
                   "  -> please report it with the log file", err=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if previous_hangup is not None:
            signal.signal(signal.SIGHUP, previous_hangup)
        close_handlers()


_LOG_FILE: list[Path | None] = [None]
_FOOTPRINT: list = [None]  # the group run's RunFootprint (cli.runner), to take back a failed run's files


def _remember(path: Path) -> None:
    _LOG_FILE[0] = path


if __name__ == "__main__":  # pragma: no cover
    main()
