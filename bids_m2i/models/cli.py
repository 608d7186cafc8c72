"""``m2i-models``: list, check, prepare (network) and make-tiny (random weights) a models folder.

Exit codes as ``m2i`` (DESIGN.md): 0 ok, 64 usage error, 65 a file differs from the manifest or a pickle /
code file is present, 66 something is missing (or ``prepare`` has no network), 73 the folder cannot be
written, 1 anything else. Messages name the file and what to do; no tracebacks on the terminal.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ..errors import M2IError, UsageError
from .store import PURPOSES

PROG = "m2i-models"
LOGGER = logging.getLogger("m2i.models")


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


@click.group(name=PROG, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Manage the models folder of m2i (--models-dir / $M2I_MODELS_DIR).

    \b
    DIR/manifest.json        files with sha256, shapes, source, licence, "tiny"
    DIR/unclip/              StableUnCLIPImg2ImgPipeline (SD 2.1 unCLIP-H)
    DIR/open_clip/<arch>/    open_clip_config.json + open_clip_model.safetensors
    DIR/eval/                torchvision feature networks for the metrics

    Documentation: docs/models.md.
    """


@cli.command("list")
@click.argument("models_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
def list_command(models_dir: Path) -> None:
    """List the components recorded in DIR/manifest.json."""
    from .store import list_models, read_manifest

    rows = list_models(models_dir)
    manifest = read_manifest(models_dir)
    click.echo(f"{models_dir}: {len(rows)} component(s), tiny={'yes' if manifest['tiny'] else 'no'}")
    roles = manifest.get("roles", {})
    for role, name in sorted(roles.items()):
        click.echo(f"  role {role}: {name}")
    header = f"  {'component':<28} {'kind':<10} {'files':>5} {'size':>10}  {'present':<7}  source; licence"
    click.echo(header)
    for row in rows:
        click.echo(
            f"  {row['component']:<28} {row['kind']:<10} {row['files']:>5} {_human_bytes(row['bytes']):>10}  "
            f"{'yes' if row['present'] else 'NO':<7}  {row['source']}; {row['licence']}"
        )
    if manifest["tiny"]:
        click.echo("  WARNING: tiny random weights (make-tiny): every image generated with them is noise")


def _parse_purposes(value: str) -> list[str]:
    purposes = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in purposes if p not in PURPOSES]
    if unknown or not purposes:
        raise click.BadParameter(f"{value!r}: use a comma-separated subset of {','.join(PURPOSES)}")
    return purposes


@cli.command("check")
@click.argument("models_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--for",
    "purposes",
    default=",".join(PURPOSES),
    show_default=True,
    metavar="LIST",
    help="what the folder must serve: comma-separated subset of clip,unclip,eval",
)
@click.option("--no-hash", is_flag=True, help="skip sha256 (sizes and tensor shapes are still checked)")
def check_command(models_dir: Path, purposes: str, no_hash: bool) -> None:
    """Check DIR against its manifest: files present, sizes, shapes, sha256, no pickles."""
    from .store import check_models

    result = check_models(models_dir, _parse_purposes(purposes), verify_hashes=not no_hash)
    click.echo(
        f"{models_dir}: OK for {purposes} ({len(result.components)} component(s), {result.files_checked} file(s)"
        f"{', sha256 verified' if not no_hash else ', sha256 not verified'})"
    )
    for warning in result.warnings:
        click.echo(f"  WARNING: {warning}")


@cli.command("prepare")
@click.argument("models_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--unclip-repo", default="stabilityai/stable-diffusion-2-1-unclip", show_default=True,
              help="Hugging Face repository of a StableUnCLIPImg2ImgPipeline")
@click.option("--fp16", is_flag=True, help="store the unCLIP weights in float16 (half the disk)")
@click.option("--only", "only", default="unclip,clip,eval", show_default=True, metavar="LIST",
              help="parts to fetch: comma-separated subset of unclip,clip,eval")
def prepare_command(models_dir: Path, unclip_repo: str, fp16: bool, only: str) -> None:
    """Download the real weights into DIR (needs a network), convert to safetensors, write the manifest."""
    from .prepare import prepare_models

    parts = tuple(_parse_purposes(only))
    manifest = prepare_models(models_dir, unclip_repo=unclip_repo, fp16=fp16, include=parts)
    click.echo(f"wrote {manifest}; check it with `{PROG} check {models_dir}`")


@cli.command("make-tiny")
@click.argument("models_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the random weights")
@click.option("--eval/--no-eval", "include_eval", default=True, show_default=True,
              help="also write random torchvision evaluation networks (~250 MB)")
def make_tiny_command(models_dir: Path, seed: int, include_eval: bool) -> None:
    """Write tiny random-weight models (same classes) for smoke tests: their images are noise."""
    from .tiny import make_tiny_models

    manifest = make_tiny_models(models_dir, seed=seed, include_eval=include_eval)
    click.echo(f"wrote {manifest} (tiny random weights, seed {seed}: every image generated with them is noise)")


def run_cli(argv: list[str] | None = None) -> int:
    """Run ``m2i-models`` and return its exit code (errors printed to stderr without traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args, prog_name=PROG, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # `m2i-models` alone: help, as a usage error
        click.echo(exc.format_message(), err=True)
        return UsageError.exit_code
    except click.exceptions.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        usage = ctx.get_usage() + "\n" if ctx is not None else ""
        click.echo(f"{usage}{PROG}: error: {exc.format_message()}\nTry '{PROG} --help'.", err=True)
        return UsageError.exit_code
    except click.exceptions.Abort:
        click.echo(f"{PROG}: interrupted", err=True)
        return 130
    except M2IError as error:
        click.echo(f"{PROG}: error: {error}", err=True)
        return error.exit_code
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted", err=True)
        return 130
    except Exception as exc:  # unexpected: one line on the terminal, the traceback in the debug log
        LOGGER.debug("unexpected failure", exc_info=True)
        click.echo(f"{PROG}: error: unexpected {type(exc).__name__}: {exc}", err=True)
        return 1
    return int(result or 0) if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """Console script ``m2i-models``."""
    sys.exit(run_cli(argv))


if __name__ == "__main__":
    main()
