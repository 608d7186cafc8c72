"""Engine options against the default, per generator and seed, and against GLMsingle's type D (issue 13).

For each generator of ``bench_glm.py`` (same sessions, ``bench_glm.make_session``) and each seed, ours
(``fithrf-denoise-rr``, in process, one thread) is fitted once with the engine's defaults and once per
configuration (``NAME:key=value,key=value``: keyword arguments of ``estimate_single_trial_betas``; values are
read as Python literals when they parse, else kept as strings; commas inside brackets belong to the value, so
``low:fractions=[0.02,0.05,1.0]`` passes a list). Each fit's scores (r_trial / test-retest as
``bench_glm.py`` scores them, and since the twelfth pass the carry-over of the previous / next trial,
``bench_glm.carryover``) and PC count are kept as one JSON file in ``--results`` so an interrupted sweep
resumes where it stopped. Two tables are printed: each configuration minus the default (PCs default → config),
and each configuration (the default included) minus GLMsingle's type D, read from the cache that
``bench_glm.py --glmsingle-cache`` fills (a cell stays empty where the cache has no run for that session).

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/glm_options.py --seeds 0 1 2 \\
        --configs medium:hrf_library=medium "nc1:hrf_noise_correction=1.0" \\
        --glmsingle-cache /tmp/glmcache --glmsingle-python /work/.venv-glm13/bin/python --results /tmp/opts

This replaces the harnesses outside the repository that the sixth and seventh passes used (docs/glm.md).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_glm  # noqa: E402
import glm_ablation  # noqa: E402


def _split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets, so that a value may be a list: ``fractions=[0.02,0.05]``."""
    items, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(text[start:position])
            start = position + 1
    return items + [text[start:]]


def parse_config(text: str) -> tuple[str, dict]:
    """``NAME:key=value,...`` -> (NAME, {key: value}); ``NAME`` alone has no options."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, _split_top_level(rest)):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"configuration {text!r}: {item!r} is not key=value")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


def type_d(session: dict, generator: str, seed: int, n_voxels: int, cache_root: Path | None):
    """GLMsingle's type-D scores for this session from the cache, or None."""
    if cache_root is None:
        return None
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        path = os.path.join(tmp, "session.npz")
        bench_glm.save_session(session, path)
        folder = bench_glm._cache_folder(cache_root, generator, seed, n_voxels, path)
    if not (folder / "run.json").exists():
        return None
    payload = json.loads((folder / "run.json").read_text())["payload"]
    return glm_ablation.score(np.load(payload["betas"]["D"]), session)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--generators", nargs="+", default=list(bench_glm.GENERATORS), choices=bench_glm.GENERATORS)
    parser.add_argument("--configs", nargs="*", default=[], help="NAME:key=value,... (engine keyword arguments)")
    parser.add_argument("--results", type=Path, required=True, help="folder of one JSON per fit (resumable)")
    parser.add_argument("--glmsingle-cache", type=Path, default=None)
    parser.add_argument("--glmsingle-python", default=None, help="python of GLMsingle's environment (lib-nsd's "
                        "HRF table is read from its installed package; without it lib-nsd is skipped)")
    parser.add_argument("--glmsingle-table", default=None, help="GLMsingle's HRF table (getcanonicalhrflibrary.tsv) "
                        "when its installed package lacks it (a source checkout's copy, read, never copied)")
    args = parser.parse_args(argv)
    configs = dict([("default", {})] + [parse_config(c) for c in args.configs])
    table = args.glmsingle_table or (bench_glm.glmsingle_table(args.glmsingle_python) if args.glmsingle_python
                                     else None)
    if table is None and "lib-nsd" in args.generators:
        print("lib-nsd skipped: needs --glmsingle-python (its HRF table)")
        args.generators = [g for g in args.generators if g != "lib-nsd"]
    args.results.mkdir(parents=True, exist_ok=True)
    scores, gs = {}, {}
    for seed in args.seeds:
        for generator in args.generators:
            session = None
            for name, options in configs.items():
                out = args.results / f"{generator}-seed{seed}-v{args.voxels}-{name}.json"
                if not out.exists():
                    session = session or bench_glm.make_session(generator, args.voxels, seed, table)
                    start = time.process_time()
                    result = glm_ablation.fit(session, **options)
                    r, tr = glm_ablation.score(result.betas, session)
                    carry = np.median(bench_glm.carryover(result.betas, session["true_betas"], session["onsets"],
                                                          session["trial_run"], session["responsive"]), axis=1)
                    out.write_text(json.dumps({"generator": generator, "seed": seed, "config": name,
                                               "options": options, "r_trial": r, "test_retest": tr,
                                               "carryover_previous": float(carry[0]),
                                               "carryover_next": float(carry[1]),
                                               "n_pcs": result.metadata["n_pcs"],
                                               "hrf_library": result.metadata.get("hrf_library_name"),
                                               "cpu_s": time.process_time() - start}))
                    print(f"{generator} seed {seed} {name}: {r:.4f} / {tr:.4f} ({result.metadata['n_pcs']} PCs; "
                          f"carry-over {carry[0]:+.3f} / {carry[1]:+.3f})", flush=True)
                scores[generator, seed, name] = json.loads(out.read_text())
            if args.glmsingle_cache is not None:
                session = session or bench_glm.make_session(generator, args.voxels, seed, table)
                gs[generator, seed] = type_d(session, generator, seed, args.voxels, args.glmsingle_cache)

    head = "| configuration | seed | " + " | ".join(f"`{g}`" for g in args.generators) + " |"
    rule = "| --- | ---: |" + " ---: |" * len(args.generators)
    print("\nminus the default, r_trial / test-retest (PCs default → configuration)\n\n" + head + "\n" + rule)
    for name in list(configs)[1:]:
        for seed in args.seeds:
            cells = []
            for g in args.generators:
                new, old = scores[g, seed, name], scores[g, seed, "default"]
                cells.append(f"{new['r_trial'] - old['r_trial']:+.3f} / {new['test_retest'] - old['test_retest']:+.3f}"
                             f" ({old['n_pcs']}→{new['n_pcs']})")
            print(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    if gs:
        print("\nminus GLMsingle's type D, r_trial / test-retest\n\n" + head + "\n" + rule)
        for name in configs:
            for seed in args.seeds:
                cells = []
                for g in args.generators:
                    d, new = gs[g, seed], scores[g, seed, name]
                    cells.append("" if d is None else
                                 f"{new['r_trial'] - d[0]:+.3f} / {new['test_retest'] - d[1]:+.3f}")
                print(f"| {name} | {seed} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
