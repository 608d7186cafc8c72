"""A DataLad dataset cloned as a git submodule, its content fetched (QA pass 30).

``git clone --recurse-submodules`` of a superdataset (the YODA layout: ``study/inputs/rawdata``) puts each
subdataset's repository in ``study/.git/modules/<name>``; ``git annex init`` in the subdataset then replaces its
``.git`` file by a link to that folder. Every annexed stimulus image (``stimuli/x.png ->
../.git/annex/objects/...``) then resolves to ``study/.git/modules/<name>/annex/objects/...``, outside BIDS_DIR:
the run stopped with 65 "stim_file 'img-0024.png' is a link to ..., outside the dataset -> copy the image into
BIDS_DIR/stimuli/", for images that are the dataset's own content. Now the object store of the dataset's
repository (and of a stimuli subdataset's) counts as the dataset; links elsewhere are still refused.
"""

from __future__ import annotations

import os
import shutil

import pytest

from bids_m2i.cli.run import run_cli

KEY = "MD5E-s1234--0123456789abcdef0123456789abcdef.png"


def _as_submodule(tiny_dataset, tmp_path, *, stimuli_subdataset=False):
    """``study/rawdata`` = the tiny dataset with its stimuli annexed into ``study/.git/modules/rawdata``."""
    study = tmp_path / "study"
    bids = study / "rawdata"
    shutil.copytree(tiny_dataset, bids)
    modules = study / ".git" / "modules" / "rawdata"
    repository = modules / "modules" / "stimuli" if stimuli_subdataset else modules
    owner = bids / "stimuli" if stimuli_subdataset else bids
    repository.mkdir(parents=True)
    os.symlink(os.path.relpath(repository, owner), owner / ".git")
    up = "" if stimuli_subdataset else "../"
    for image in sorted((bids / "stimuli").glob("*.png")):
        key = f"{image.stem}-{KEY}"
        store = repository / "annex" / "objects" / "Xk" / "3Q" / key
        store.mkdir(parents=True)
        shutil.move(image, store / key)
        os.symlink(f"{up}.git/annex/objects/Xk/3Q/{key}/{key}", image)
    return bids


@pytest.mark.parametrize("stimuli_subdataset", [False, True], ids=["dataset", "stimuli-subdataset"])
def test_annexed_stimuli_of_a_submodule_clone_are_read(tiny_dataset, tmp_path, capsys, started,
                                                       stimuli_subdataset):
    bids = _as_submodule(tiny_dataset, tmp_path, stimuli_subdataset=stimuli_subdataset)
    image = bids / "stimuli" / "img-0024.png"
    assert image.is_symlink() and image.is_file()
    assert not image.resolve().is_relative_to(bids.resolve())  # the content lies outside BIDS_DIR
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 0, err  # was 65 "... is a link to .../.git/modules/rawdata/annex/objects/..., outside the dataset"
    assert started


def test_a_link_into_the_superdataset_outside_the_annex_is_still_refused(tiny_dataset, tmp_path, capsys,
                                                                        started):
    bids = _as_submodule(tiny_dataset, tmp_path)
    elsewhere = tmp_path / "study" / ".git" / "modules" / "rawdata" / "private.png"
    shutil.copy(bids / "stimuli" / "img-0024.png", elsewhere)  # a readable image, but not annexed content
    (bids / "stimuli" / "img-0024.png").unlink()
    os.symlink(elsewhere, bids / "stimuli" / "img-0024.png")
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 65 and "outside the dataset" in err and "img-0024.png" in err
    assert not started
