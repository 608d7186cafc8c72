"""The issue-14 protocol over several simulator seeds: simulate, run the participant level, score against truth.

For each seed S: ``m2i-simulate ROOT/dS --preset demo --seed S`` (skipped when the dataset exists), then
``m2i ROOT/dS ROOT/outS-LABEL participant -w ROOT/workS-LABEL --target pixels text`` (skipped when its
predictions table exists), then :func:`score_against_truth.score_run` next to the oracle. Prints one markdown row
per seed (perception PixCorr / two-way and their share of the oracle's, imagery from memory, pure imagination
against ``derivatives/simulation/targets/`` with the oracle's two-way, the text channel's cue retrieval top-1,
the pixel decoder's penalty scale, and the perception betas against the true amplitudes: r_trial and the
carry-over of the previous trial, ``score_against_truth.betas_against_truth``) and writes every figure to
``ROOT/sweep-LABEL.json``.

    python benchmarks/seed_sweep.py --root /tmp/sweep --seeds 0 1 2 --label after
    python benchmarks/seed_sweep.py --root /tmp/sweep --seeds 0 1 2 --label medium --m2i-args "--hrf-library medium"

Run it from the tree to measure (``PYTHONPATH`` first on the path); run it under ``nice`` on shared machines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_against_truth import betas_against_truth, score_run  # noqa: E402

from bids_m2i.simulate.oracle import oracle_scores  # noqa: E402


def run_seed(root: Path, seed: int, label: str, extra: tuple[str, ...] = ()) -> dict:
    dataset = root / f"d{seed}"
    if not (dataset / "dataset_description.json").is_file():
        subprocess.run([sys.executable, "-c", "import sys; from bids_m2i.simulate.cli import main; sys.exit(main())",
                        str(dataset), "--preset", "demo", "--seed", str(seed), "--overwrite"], check=True)
    out = root / f"out{seed}-{label}"
    if not (out / "sub-01" / "decoding" / "sub-01_desc-predictions_table.tsv").is_file():
        subprocess.run([sys.executable, "-m", "bids_m2i.cli.run", str(dataset), str(out), "participant", "-w",
                        str(root / f"work{seed}-{label}"), "--target", "pixels", "text", *extra], check=True)
    ours = score_run(dataset, out, "01")
    oracle = {k: v for k, v in oracle_scores(dataset, "01", image_size=32).items() if isinstance(v, dict)}
    sidecar = out / "sub-01" / "decoding" / "sub-01_desc-pixelsridge_model.json"
    scale = json.loads(sidecar.read_text())["info"].get("penalty_scale", {}).get("chosen", 1.0) \
        if sidecar.is_file() else None
    betas = betas_against_truth(dataset, out, "01", "perception")
    return {"seed": seed, "ours": ours, "oracle": oracle, "penalty_scale": scale, "betas": betas}


def row(result: dict, label: str) -> str:
    ours, oracle = result["ours"], result["oracle"]
    p, m, t = ours["perception"], ours["imagery_memory"], ours["imagery_text"]
    text = ours.get("text_channel", {}).get("image_top1_text", {})
    return (f"| {result['seed']} | {label} | {p['pixcorr']:.3f} / {p['twoway']:.3f} "
            f"({p['pixcorr'] / oracle['perception']['pixcorr']:.0%} / {p['twoway'] / oracle['perception']['twoway']:.0%})"
            f" | {m['pixcorr']:.3f} / {m['twoway']:.3f} | {t['pixcorr']:.3f} / {t['twoway']:.3f} "
            f"({oracle['imagery_text']['twoway']:.3f}) | {text.get('value', float('nan')):.2f} "
            f"(p {text.get('p_value', float('nan')):.3f}) | {result['penalty_scale']} "
            f"| {result['betas']['r_trial']:.3f} / {result['betas']['carryover_previous']:+.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--label", default="run")
    parser.add_argument("--m2i-args", default="", help="extra options for the participant run, one string "
                        "(e.g. '--hrf-library medium'); give each variant its own --label")
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    print("| seed | run | perception PixCorr / 2-way (% of oracle) | imagery from memory PixCorr / 2-way "
          "| pure imagination PixCorr / 2-way (oracle 2-way) | text top-1 | penalty scale "
          "| perception betas: r_trial / carry-over of the previous trial |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        result = run_seed(args.root, seed, args.label, tuple(args.m2i_args.split()))
        results.append(result)
        print(row(result, args.label), flush=True)
    (args.root / f"sweep-{args.label}.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
