#!/usr/bin/env bash
# The app end to end through its CLI, as `make demo` runs it, then the tiny-models unCLIP path with best-of-4
# (issue 14's tiny-models goal). On a machine with a CUDA GPU, `--device auto` (the default) puts every
# engine on the GPU: this is the check that the app, not only its engines, runs there. Usage:
#     bash benchmarks/cuda_end_to_end.sh RESULTS_DIR      (python3 must import bids_m2i and its dependencies)
# It prints each step's exit status and cumulative seconds, the group's conditions table, and one
# reconstruction sidecar (device, dtype, prompt, chosen candidate, seed).
set -u
R=${1:-/tmp/gd}; mkdir -p $R
m2i() { python3 -c 'import sys; from bids_m2i.cli.run import main; sys.argv[0] = "m2i"; sys.exit(main())' "$@"; }
sim() { python3 -c 'import sys; from bids_m2i.simulate.cli import main; sys.exit(main())' "$@"; }
models() { python3 -c 'import sys; from bids_m2i.models.cli import main; sys.exit(main())' "$@"; }
t0=$(date +%s)
sim $R/bids --preset demo --seed 0 --overwrite > $R/sim.log 2>&1; echo "simulate rc=$? $(( $(date +%s) - t0 )) s"
m2i $R/bids $R/out participant -w $R/work --target pixels text --skip-bids-validation > $R/part.log 2>&1; echo "participant rc=$? $(( $(date +%s) - t0 )) s"
m2i $R/bids $R/out group -w $R/work --skip-bids-validation > $R/group.log 2>&1; echo "group rc=$? $(( $(date +%s) - t0 )) s"
models make-tiny $R/models > $R/models.log 2>&1; echo "make-tiny rc=$?"
m2i $R/bids $R/out2 participant --participant-label 01 -w $R/work2 --models-dir $R/models --target pixels clip clip-text --generator unclip --candidates 4 --skip-bids-validation > $R/tiny.log 2>&1; echo "tiny unclip rc=$? $(( $(date +%s) - t0 )) s"
tail -n 2 $R/part.log $R/group.log $R/tiny.log
find $R/out -name "*conditions*.tsv" -path "*group*" | head -1 | xargs -r cat
python3 - $R <<'PY'
import json, sys, glob
R = sys.argv[1]
cars = sorted(glob.glob(f"{R}/out2/**/*recon*.json", recursive=True))
print(len(cars), "reconstruction sidecars")
for c in cars[:1]:
    d = json.load(open(c)); print({k: d.get(k) for k in ("Device", "DType", "Prompt", "CandidateIndex", "Seed", "Generator", "ModelsTiny")})
PY
