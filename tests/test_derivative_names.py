"""Output names without importing pybids (bids_m2i.bids.names): the same names as pybids' ``build_path`` on
our config's patterns, for the names m2i writes and for many other entity sets (missing, unlisted and extra
entities, extensions with and without their dot), and a fallback to pybids for pattern syntax it does not read.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from bids_m2i.bids.derivatives import derivative_path, pybids_config
from bids_m2i.bids.names import build_name, supported

build_path = pytest.importorskip("bids.layout.writing").build_path

PATTERNS = pybids_config()["default_path_patterns"]
VALUES = {
    "subject": ["01", "pilot"], "session": ["1", "imagery"], "task": ["perception", "imagery"],
    "acquisition": ["mb4"], "run": ["1", "12"], "echo": ["2"], "space": ["T1w", "MNI152NLin2009cAsym"],
    "cohort": ["2"], "res": ["1", "2"], "trial": ["0001", "12345"], "stat": ["effect", "ncsnr", "r2"],
    "desc": ["fithrfdenoiserr", "preproc", "hmc", "designfithrf", "recon"],
    "suffix": ["bold", "boldref", "timeseries", "statseries", "statmap", "events", "mask", "xfm", "design",
               "ncsnr", "report", "model", "table", "features", "metrics", "image", "carpet", "T1w"],
    "datatype": ["func", "figures", "decoding", "images", "anat"],
    "extension": [".nii.gz", "nii.gz", ".nii", ".json", ".tsv", ".npy", ".svg", ".png", ".html", ".txt",
                  ".safetensors", "..json", ".mat"],
}


def test_config_patterns_are_read_without_pybids():
    assert all(supported(p) for p in PATTERNS)


def test_names_equal_pybids_on_random_entity_sets():
    rng = random.Random(0)
    matched, folders = 0, set()
    for _ in range(3000):
        ents = {"subject": rng.choice(VALUES["subject"]), "suffix": rng.choice(VALUES["suffix"]),
                "extension": rng.choice(VALUES["extension"])}
        for key in rng.sample(sorted(VALUES), rng.randint(0, 8)):
            ents[key] = rng.choice(VALUES[key])
        if rng.random() < 0.05:
            del ents["subject"]
        if rng.random() < 0.05:
            ents["notanentity"] = "x"
        expected = build_path(ents, PATTERNS, strict=False)
        assert build_name(ents, PATTERNS) == expected, ents
        matched += expected is not None
        if expected is not None:
            folders.add(expected.split("/")[-2])
    assert matched > 500          # not only the no-match answer
    assert folders == {"func", "figures", "decoding", "images"}      # every pattern of the config


@pytest.mark.parametrize("ents", [
    dict(subject="01", task="sim", stat="effect", desc="fithrfdenoiserr", suffix="statseries", extension=".nii.gz",
         datatype="func"),
    dict(subject="01", session="2", task="sim", stat="ncsnr", desc="lsa", suffix="statmap", extension=".nii.gz",
         datatype="func"),
    dict(subject="01", task="sim", desc="designfithrf", suffix="design", extension=".svg", datatype="figures"),
    dict(subject="01", space="T1w", res="2", desc="ridgepixels", suffix="model", extension=".safetensors",
         datatype="decoding"),
    dict(subject="01", trial="0007", desc="recon", suffix="image", extension=".png", datatype="images"),
    dict(subject="01", task="imagery", run="3", desc="confounds", suffix="timeseries", extension=".tsv"),
])
def test_names_m2i_writes(tmp_path, ents):
    expected = build_path({k: v for k, v in ents.items()}, PATTERNS, strict=False)
    assert expected is not None
    assert derivative_path(tmp_path, **{k: v for k, v in ents.items()}) == tmp_path / expected


def test_unsupported_syntax_falls_back_to_pybids():
    patterns = ["sub-{subject}/anat/sub-{subject}[_acq-{acquisition}]_{suffix<T[12]w|FLAIR>}{extension<.nii.gz>}",
                "sub-{subject}/x/sub-{subject}[_a-{acquisition}_b-{run}]_{suffix}{extension}",
                "sub-{subject}/dwi/sub-{subject}_{suffix|dwi}.{extension<bval|bvec>|bval}",
                "sub-{subject}/y/sub-{subject}[_acq-{acquisition<mb4>}]_{suffix}{extension}"]
    assert not any(supported(p) for p in patterns)
    for ents in (dict(subject="01", suffix="T2w", extension=".nii.gz"), dict(subject="01", suffix="T3w"),
                 dict(subject="01", extension="bvec", acquisition="x", run="1", suffix="s"),
                 dict(subject="01", acquisition="mb2", suffix="s", extension=".tsv")):
        assert build_name(ents, patterns) == build_path(ents, patterns, strict=False)


def test_no_pattern_matches():
    assert build_name(dict(subject="01", suffix="bold", extension=".mat"), PATTERNS) is None
    with pytest.raises(ValueError):
        derivative_path("out", subject="01", suffix="nothing", extension=".nii.gz")


def test_building_a_name_imports_no_pybids():
    code = ("import sys; from bids_m2i.bids.derivatives import derivative_path; "
            "derivative_path('o', subject='01', task='t', stat='effect', desc='lsa', suffix='statseries', "
            "extension='.nii.gz', datatype='func'); print('bids' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
