#!/bin/bash
# m2i participant level on SLURM, m2i installed on the cluster (a venv or a module): one participant
# per array task, nipype's MultiProc inside the task. Submit (or use slurm_submit.sh):
#   n=$(find "$BIDS_DIR" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
#   sbatch --array=0-$((n - 1)) slurm_participant_array.sh [more m2i options]
#SBATCH --job-name=m2i-participant
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=m2i-participant-%A_%a.log
# With a GPU (clip/unclip decoding, faster motion correction), uncomment and adapt to your site:
##SBATCH --gres=gpu:1
set -euo pipefail

# Site settings: override them in the environment when submitting (sbatch passes it on).
BIDS_DIR=${BIDS_DIR:-/path/to/bids}
OUT_DIR=${OUT_DIR:-/path/to/derivatives/m2i}
WORK_ROOT=${WORK_ROOT:-/scratch/${USER:-$(id -un)}/m2i_work}
export M2I_MODELS_DIR=${M2I_MODELS_DIR:-/path/to/m2i_models}

# Array index -> participant label: the sorted sub-* folders of the dataset, counted from 0.
mapfile -t subjects < <(find "$BIDS_DIR" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' -printf '%f\n' | sort)
if (( SLURM_ARRAY_TASK_ID >= ${#subjects[@]} )); then
    echo "array task $SLURM_ARRAY_TASK_ID: $BIDS_DIR has only ${#subjects[@]} sub-* folders" >&2
    exit 64
fi
label=${subjects[$SLURM_ARRAY_TASK_ID]#sub-}
# The job's memory in MB (--mem or --mem-per-cpu); 10 % stays free for the m2i process itself.
job_mem_mb=${SLURM_MEM_PER_NODE:-$(( ${SLURM_MEM_PER_CPU:-4096} * SLURM_CPUS_PER_TASK ))}
# In tenths of a GB: a 6 GB job gives m2i --mem-gb 5.4.
mem_tenths=$(( job_mem_mb * 9 / 1024 ))
mem_gb=$(( mem_tenths / 10 )).$(( mem_tenths % 10 ))
# One work dir per participant: a rerun resumes from it, and tasks never share nipype's cache.
WORK_DIR=$WORK_ROOT/sub-$label
mkdir -p "$OUT_DIR" "$WORK_DIR"

m2i "$BIDS_DIR" "$OUT_DIR" participant --participant-label "$label" -w "$WORK_DIR" \
    --nprocs "$SLURM_CPUS_PER_TASK" --mem-gb "$mem_gb" "$@"
