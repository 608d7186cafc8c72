"""A task whose ``stim_file`` names sounds or videos beside the image tasks (QA pass 30).

Labs run an auditory localizer (``stim_file`` ``sounds/tone0.wav``) or a movie run in the same session as the
image tasks. Its trials were taken as perception trials to decode, and the start-up check stopped with 65
"Stimulus image .../tone0.wav cannot be read: cannot identify image file -> replace it with a complete PNG/JPEG
(re-export or re-download it)": the file is fine, it is not an image. Now the message says it is a sound (a
video, a document) file, names its task and the ``--task`` selection of the other tasks; with that selection the
run starts.
"""

from __future__ import annotations

import shutil
import wave

import pytest

from bids_m2i.cli.run import run_cli


def _with_localizer(tiny_dataset, tmp_path, suffix):
    bids = tmp_path / "bids"
    shutil.copytree(tiny_dataset, bids)
    func = bids / "sub-01" / "func"
    shutil.copy(func / "sub-01_task-perception_run-01_bold.nii.gz", func / "sub-01_task-localizer_run-01_bold.nii.gz")
    (func / "sub-01_task-localizer_run-01_bold.json").write_text(
        (func / "sub-01_task-perception_run-01_bold.json").read_text().replace('"perception"', '"localizer"'))
    rows = ["onset\tduration\ttrial_type\tstim_file"] + [f"{10 + 12 * i}\t2\tstimulus\tclips/clip{i % 3}{suffix}"
                                                        for i in range(6)]
    (func / "sub-01_task-localizer_run-01_events.tsv").write_text("\n".join(rows) + "\n")
    (bids / "stimuli" / "clips").mkdir()
    for k in range(3):
        path = bids / "stimuli" / "clips" / f"clip{k}{suffix}"
        if suffix == ".wav":
            with wave.open(str(path), "wb") as sound:
                sound.setnchannels(1)
                sound.setsampwidth(2)
                sound.setframerate(8000)
                sound.writeframes(b"\0\0" * 800)
        else:
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))  # an MP4 header
    return bids


@pytest.mark.parametrize("suffix, kind", [(".wav", "a sound"), (".mp4", "a video")])
def test_sounds_and_videos_are_named_as_such_with_the_tasks_to_select(tiny_dataset, tmp_path, capsys, started,
                                                                      suffix, kind):
    bids = _with_localizer(tiny_dataset, tmp_path, suffix)
    args = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation"]
    assert run_cli(args) == 65
    err = capsys.readouterr().err
    # was: "Stimulus image ... cannot be read: cannot identify image file ... (re-export or re-download it)"
    assert f"clip0{suffix} (task localizer) is {kind} file, not an image" in err
    assert "--task imagery perception" in err and "re-download" not in err
    assert not started
    assert run_cli([*args, "--task", "imagery", "perception"]) == 0
    assert started
