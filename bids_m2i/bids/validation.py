"""Run the official BIDS validator (``bids-validator-deno`` from PyPI) on a dataset."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ValidationFailed

LOGGER = logging.getLogger("m2i.bids")


@dataclass
class ValidationReport:
    errors: Counter
    warnings: Counter
    examples: dict[str, list[str]]
    raw: dict
    locations: list[str] = field(default_factory=list)  # of every error that names a file

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def summary(self, limit: int = 8) -> str:
        lines = []
        for code, count in self.errors.most_common(limit):
            where = ", ".join(self.examples.get(code, [])[:2])
            lines.append(f"  {code} ({count}x){': ' + where if where else ''}")
        return "\n".join(lines)


def validator_executable() -> str | None:
    here = Path(sys.executable).parent / "bids-validator-deno"
    if here.exists():
        return str(here)
    return shutil.which("bids-validator-deno")


def validator_command() -> list[str] | None:
    """How to start the validator: through this interpreter when its Python package is importable (the
    console script's shebang may name an interpreter this user cannot run, e.g. a venv made from a Python
    under /root and run as another uid), else the executable on PATH."""
    import importlib.util

    if importlib.util.find_spec("bids_validator_deno") is not None:
        return [sys.executable, "-c", "import sys; sys.argv[0] = 'bids-validator-deno'; "
                                      "from bids_validator_deno import cli; cli()"]
    exe = validator_executable()
    return [exe] if exe else None


def run_validator(dataset: Path, timeout: float = 600) -> ValidationReport:
    command = validator_command()
    if command is None:
        raise ValidationFailed("The BIDS validator (bids-validator-deno) is not installed",
                               hint="pip install bids-validator-deno, or use --skip-bids-validation")
    proc = subprocess.run([*command, str(dataset), "--format", "json", "--ignoreWarnings"],
                          capture_output=True, text=True, timeout=timeout, check=False)
    try:
        raw = json.loads(proc.stdout)
    except ValueError as exc:
        raise ValidationFailed(f"The BIDS validator failed on {dataset}: {proc.stderr.strip()[-500:]}",
                               hint="use --skip-bids-validation to run without it") from exc
    errors: Counter = Counter()
    warnings: Counter = Counter()
    examples: dict[str, list[str]] = {}
    locations: list[str] = []
    for issue in raw.get("issues", {}).get("issues", []):
        code = issue.get("code", "UNKNOWN")
        if issue.get("severity") == "error":
            errors[code] += 1
            location = issue.get("location")
            if location:
                locations.append(location)
            if location and len(examples.setdefault(code, [])) < 3:
                examples[code].append(location)
        else:
            warnings[code] += 1
    return ValidationReport(errors, warnings, examples, raw, locations)


def validate_input_dataset(bids_dir: Path) -> ValidationReport:
    """Validate the input; raise :class:`ValidationFailed` (exit 16) with a short summary on errors."""
    LOGGER.info("Validating %s with bids-validator-deno", bids_dir)
    report = run_validator(bids_dir)
    if report.n_errors and _only_unfetched_files(bids_dir, report):
        # a DataLad clone with only some participants fetched (`datalad get sub-01`): the validator cannot read
        # the others' files; whether the selected runs are all here is checked next (exit 66 with the fix)
        LOGGER.warning("The BIDS validator could not read %d file(s) whose content is not fetched (DataLad / "
                       "git-annex links, e.g. %s); going on: the selected runs are checked next",
                       report.n_errors, report.locations[0])
        return report
    if report.n_errors:
        raise ValidationFailed(
            f"The BIDS validator found {report.n_errors} error(s) in {bids_dir}:\n{report.summary()}",
            hint="fix them (run `bids-validator-deno DATASET` for details), or run with --skip-bids-validation",
        )
    return report


def _only_unfetched_files(bids_dir: Path, report: ValidationReport) -> bool:
    """Every error of the report is about a file present only as a dangling (unfetched annex) link."""
    from .layout import is_unfetched_link

    return len(report.locations) == report.n_errors and all(
        is_unfetched_link(Path(bids_dir) / location.lstrip("/")) for location in report.locations)
