#!/bin/bash
# Submit a whole m2i analysis on SLURM: one array task per participant, then the group level once all of
# them succeeded. Run it on a login node, from the folder where the logs should go:
#   BIDS_DIR=/path/to/bids OUT_DIR=/path/to/out bash slurm_submit.sh slurm     [more m2i options]
#   M2I_SIF=/path/to/m2i.sif BIDS_DIR=... OUT_DIR=... bash slurm_submit.sh apptainer [more m2i options]
# "slurm" runs the m2i installed on the cluster, "apptainer" the image. The options go to the
# participant level only. Other settings (WORK_ROOT, M2I_MODELS_DIR or MODELS_DIR) travel in the
# environment, which sbatch passes on to the jobs.
set -euo pipefail

flavour=${1:?"usage: slurm_submit.sh {slurm|apptainer} [m2i options]"}
shift
case $flavour in
    slurm | apptainer) ;;
    *) echo "slurm_submit.sh: the first argument is 'slurm' or 'apptainer', not '$flavour'" >&2; exit 64 ;;
esac
: "${BIDS_DIR:?set BIDS_DIR to the BIDS dataset}" "${OUT_DIR:?set OUT_DIR to the output folder}"
export BIDS_DIR OUT_DIR
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

n=$(find "$BIDS_DIR" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
if (( n == 0 )); then
    echo "slurm_submit.sh: no sub-* folders in $BIDS_DIR" >&2
    exit 66
fi
# --parsable prints "jobid" or "jobid;cluster".
array_job=$(sbatch --parsable --array=0-$((n - 1)) "$scripts/${flavour}_participant_array.sh" "$@")
array_job=${array_job%%;*}
# If a participant fails, SLURM cancels the group job instead of leaving it pending forever.
group_job=$(sbatch --parsable --dependency=afterok:"$array_job" --kill-on-invalid-dep=yes \
    "$scripts/${flavour}_group.sh")
group_job=${group_job%%;*}
echo "participants: job array $array_job ($n tasks); group: job $group_job (starts when all succeeded)"
