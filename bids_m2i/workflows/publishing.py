"""A nipype node that restores what it published when a rerun finds it finished.

nipype skips a node whose results are in the work dir: the files it published under OUTPUT_DIR, if deleted or
changed since, would never come back, and a rerun would leave an incomplete derivatives dataset. Run, the node
records what it published (a manifest in its folder, see ``bids_m2i.interfaces.derivatives``); found
finished, it publishes them again from its results in the work dir, computing nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nipype.pipeline import engine as pe

from ..errors import M2IError
from ..interfaces.base import record_error
from ..interfaces.derivatives import recording_publications, restore_publications

LOGGER = logging.getLogger("m2i.workflow")


class PublishingNode(pe.Node):
    """``pe.Node`` whose published files are recorded when it runs and restored when it is found cached.

    The restore happens when nipype asks whether the node is cached (the scheduler's check in the main
    process, or ``Node.run``), so before the nodes after it (the report) look at OUTPUT_DIR."""

    def is_cached(self, rm_outdated=False):
        cached, updated = super().is_cached(rm_outdated=rm_outdated)
        if cached and updated:
            try:
                restored, stale = restore_publications(self.output_dir())
            except M2IError as error:  # e.g. OUTPUT_DIR became read-only: say so as a node failure would
                record_error(error, self.name)
                raise
            if restored:
                LOGGER.info("restored %d published file(s) of %s from the work dir (%s%s)", len(restored),
                            self.name, ", ".join(Path(p).name for p in restored[:3]),
                            ", ..." if len(restored) > 3 else "")
            if stale:
                # a derivative edited in place changed its hard-linked work-dir result too (or the result is
                # gone): nothing trustworthy to restore from, so the step runs again
                LOGGER.warning("%s: the work-dir result behind %s changed or is gone since it was published: "
                               "running the step again", self.name, Path(stale[0]).name)
                return False, False
        return cached, updated

    def _run_interface(self, execute=True, updatehash=False):
        if not execute or updatehash:
            return super()._run_interface(execute=execute, updatehash=updatehash)
        with recording_publications(self.output_dir()):
            return super()._run_interface(execute=execute, updatehash=updatehash)
