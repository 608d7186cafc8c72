"""Non-square stimuli are scored against what the decoder reconstructs (qa35).

The decoder's targets and every reconstruction are the stimulus' centre square (pixels: ``pixel_vector``
crops it; CLIP's preprocessing crops it too), but the evaluation resized the whole non-square image into the
metrics' 425 x 425 square: a 3:2 photograph's margins were compared with the reconstruction's centre, so
the same decoding scored lower on a wide stimulus than on its centre square. Targets are now centre-cropped.
"""

import numpy as np
import pandas as pd
from PIL import Image


def _run(tmp_path, wide: bool):
    from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant

    rng = np.random.default_rng(0)
    stimuli = tmp_path / ("wide" if wide else "square") / "stimuli"
    stimuli.mkdir(parents=True)
    centres = []
    for i in range(12):
        centre = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        centres.append(centre.astype(float).ravel() / 255)
        if wide:  # margins unlike the centre: black on the left, white on the right (48 x 32, 3:2)
            image = np.concatenate([np.zeros((32, 8, 3), np.uint8), centre, np.full((32, 8, 3), 255, np.uint8)], 1)
        else:
            image = centre
        Image.fromarray(image).save(stimuli / f"s{i}.png")
    rows = [dict(condition="perception", cue="none", stimulus=f"s{i}", stim_file=f"s{i}.png")
            for _ in range(2) for i in range(12)]
    trials = pd.DataFrame(rows)
    # the responses depend on the centre only (what both stimulus sets share), so the decoding is the same
    index = [int(s[1:]) for s in trials.stimulus]
    betas = (np.stack(centres)[index] @ rng.normal(size=(32 * 32 * 3, 150)) / 30
             + 0.1 * rng.normal(size=(len(trials), 150))).astype(np.float32)
    result = reconstruct_participant(betas, trials, stimuli, DecodingOptions(n_perm=20, work_dir=stimuli.parent / "w"))
    return result.metrics.set_index(["metric", "feature_space"])


def test_wide_stimuli_score_as_their_centre_square(tmp_path):
    wide, square = _run(tmp_path, True), _run(tmp_path, False)
    for metric in ("pixcorr", "ssim"):
        assert abs(wide.loc[(metric, "pixels")].value - square.loc[(metric, "pixels")].value) < 1e-6, metric
