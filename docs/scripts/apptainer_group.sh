#!/bin/bash
# m2i group level on SLURM with Apptainer; runs after every participant task succeeded:
#   sbatch --dependency=afterok:<participant array job id> apptainer_group.sh [more m2i options]
#SBATCH --job-name=m2i-group
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=m2i-group-%j.log
set -euo pipefail

# Site settings: override them in the environment when submitting (sbatch passes it on).
M2I_SIF=${M2I_SIF:-/path/to/m2i.sif}
BIDS_DIR=${BIDS_DIR:-/path/to/bids}
OUT_DIR=${OUT_DIR:-/path/to/derivatives/m2i}
WORK_ROOT=${WORK_ROOT:-/scratch/${USER:-$(id -un)}/m2i_work}

# The job's memory in MB (--mem or --mem-per-cpu); 10 % stays free for the m2i process itself.
job_mem_mb=${SLURM_MEM_PER_NODE:-$(( ${SLURM_MEM_PER_CPU:-4096} * SLURM_CPUS_PER_TASK ))}
# In tenths of a GB: a 6 GB job gives m2i --mem-gb 5.4.
mem_tenths=$(( job_mem_mb * 9 / 1024 ))
mem_gb=$(( mem_tenths / 10 )).$(( mem_tenths % 10 ))
WORK_DIR=$WORK_ROOT/group
mkdir -p "$WORK_DIR"

# The group level reads the participants' derivatives in /out; it needs no GPU and no models.
apptainer exec --cleanenv --no-home --pwd /work --env M2I_CONTAINER_TYPE=apptainer \
    --bind "$BIDS_DIR:/data:ro" --bind "$OUT_DIR:/out" --bind "$WORK_DIR:/work" \
    "$M2I_SIF" \
    m2i /data /out group -w /work \
    --nprocs "$SLURM_CPUS_PER_TASK" --mem-gb "$mem_gb" "$@"
