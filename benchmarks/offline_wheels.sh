#!/usr/bin/env bash
# Collect the wheels that benchmarks/bench_cuda.py and benchmarks/cuda_end_to_end.sh need on an offline GPU
# machine whose python3 already has torch (and numpy, scipy, pandas, pillow, ... as a CUDA image has them), in
# the versions of this checkout's .venv, for that machine's Python and platform. Then, there:
#     python3 -m pip install --no-index --no-deps --target /tmp/site WHEEL_DIR/*.whl
#     PYTHONPATH=/tmp/site:$PWD python3 benchmarks/bench_cuda.py --out results/
#     PYTHONPATH=/tmp/site:$PWD bash benchmarks/cuda_end_to_end.sh /tmp/gd
# Usage: bash benchmarks/offline_wheels.sh WHEEL_DIR [PYTHON_VERSION (default 3.12)]
# About 50 MB: nilearn's bundled atlases and JavaScript (unused by m2i) are stripped from its wheel.
set -euo pipefail
dest=${1:?usage: offline_wheels.sh WHEEL_DIR [PYTHON_VERSION]}
pyver=${2:-3.12}
venv_pip=${VENV_PIP:-.venv/bin/pip}
# the app's imports beyond what a CUDA image with torch ships, and what they need that such images lack
names="diffusers transformers tokenizers huggingface_hub httpx2 httpcore2 truststore kernels tomlkit lazy-importer
regex click open_clip_torch ftfy wcwidth importlib_metadata pydot nibabel nipype traits prov rdflib acres
etelemetry ci-info looseversion puremagic pybids SQLAlchemy bids-validator bidsschematools num2words
universal_pathlib pathlib-abc frozendict nilearn tomli_w formulaic interface_meta"
pins=()
for name in $names; do
    version=$("$venv_pip" show "$name" 2>/dev/null | awk '/^Version:/{print $2}')
    if [ -n "$version" ]; then pins+=("$name==$version"); else echo "not in the venv, skipped: $name" >&2; fi
done
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
mkdir -p "$dest"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" -d "$dest" "${pins[@]}"
for wheel in "$dest"/nilearn-*.whl; do
    [ -e "$wheel" ] || continue
    zip -q -d "$wheel" 'nilearn/datasets/data/*.nii.gz' 'nilearn/_assets/js/*' '*/tests/*' \
        'nilearn/datasets/data/fsaverage5/*' >/dev/null || true
done
du -sh "$dest"
