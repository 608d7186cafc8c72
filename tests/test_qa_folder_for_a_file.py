"""A folder given where a decoding option wants a file (``--captions``, ``--roi-mask``, ``--shared-decoder``):
64 "is a folder, not a file", as for ``--config``, ``--events-map`` and ``--bids-filter-file``.

Before: ``--captions DIR`` was 66 "--captions file not found" and ``--shared-decoder DIR`` 66 "shared decoder
not found" (the folder is there: the user checks the spelling), ``--roi-mask DIR`` 65 "cannot be read as a NIfTI
image (Cannot work out file type ...)".
"""

from __future__ import annotations

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


@pytest.mark.parametrize("option", [["--captions"], ["--roi-mask"], ["--shared-decoder"]])
def test_a_folder_for_a_file_option_is_64_naming_it(tmp_path, capsys, started, option):
    bids = make_minimal_bids(tmp_path / "bids")
    folder = tmp_path / "downloads"
    folder.mkdir()
    targets = ["--target", "text"] if option == ["--captions"] else []
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", *targets, *option, str(folder)])
    err = capsys.readouterr().err
    assert code == 64, err
    assert f"{folder} is a folder, not a file" in err and "Traceback" not in err and started == []
