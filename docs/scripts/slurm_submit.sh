#!/bin/bash
# Submit a whole m2i analysis on SLURM: one array task per participant, then the group level once all of
# them succeeded. Run it on a login node, from the folder where the logs should go:
#   BIDS_DIR=/path/to/bids OUT_DIR=/path/to/out bash slurm_submit.sh slurm [m2i options] [-- sbatch options]
#   M2I_SIF=/path/to/m2i.sif BIDS_DIR=... OUT_DIR=... bash slurm_submit.sh apptainer [m2i options] [-- ...]
# "slurm" runs the m2i installed on the cluster, "apptainer" the image. The m2i options go to the
# participant level only. The sbatch options after "--" go to both jobs and override the scripts' #SBATCH
# lines (8 cores, 32 GB, 24 h per participant), e.g. on a small node, partition and account of your site:
#   bash slurm_submit.sh slurm -- --cpus-per-task 1 --mem 6G --time 02:00:00 --partition short --account lab
# Each job gives m2i the cores and memory it got (--nprocs, --mem-gb). Give the memory with --mem: the
# scripts set --mem, and sbatch refuses --mem-per-cpu next to it. Other settings (WORK_ROOT,
# M2I_MODELS_DIR or MODELS_DIR) travel in the environment, which sbatch passes on to the jobs; so do
# sbatch's own input variables (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...).
set -euo pipefail

usage="usage: slurm_submit.sh {slurm|apptainer} [m2i options] [-- sbatch options]"
flavour=${1:?$usage}
shift
case $flavour in
    slurm | apptainer) ;;
    *) echo "slurm_submit.sh: the first argument is 'slurm' or 'apptainer', not '$flavour'" >&2; exit 64 ;;
esac
# m2i options up to "--", sbatch options after it.
m2i_options=()
sbatch_options=()
while (( $# > 0 )); do
    if [[ $1 == -- ]]; then
        shift
        sbatch_options=("$@")
        break
    fi
    m2i_options+=("$1")
    shift
done
: "${BIDS_DIR:?set BIDS_DIR to the BIDS dataset}" "${OUT_DIR:?set OUT_DIR to the output folder}"
export BIDS_DIR OUT_DIR
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

n=$(find "$BIDS_DIR" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
if (( n == 0 )); then
    echo "slurm_submit.sh: no sub-* folders in $BIDS_DIR" >&2
    exit 66
fi
array_script=$scripts/${flavour}_participant_array.sh
group_script=$scripts/${flavour}_group.sh

# Ask SLURM first (--test-only submits nothing): a job that asks for more cores or memory than any node of
# its partition has is otherwise accepted and then waits forever (reason PartitionConfig).
for script in "$array_script" "$group_script"; do
    if ! answer=$(sbatch --test-only "${sbatch_options[@]}" "$script" 2>&1); then
        echo "slurm_submit.sh: SLURM refuses $(basename "$script") with options: ${sbatch_options[*]:-(none)}" >&2
        echo "$answer" >&2
        echo "  -> give resources that a node of the partition has after '--', e.g." \
            "-- --cpus-per-task 2 --mem 6G (sinfo -o '%P %c %m' lists cores and MB per node)" >&2
        exit 64
    fi
done
# --parsable prints "jobid" or "jobid;cluster". The user's options come after ours, so they win.
array_job=$(sbatch --parsable --array=0-$((n - 1)) "${sbatch_options[@]}" "$array_script" "${m2i_options[@]}")
array_job=${array_job%%;*}
# If a participant fails, SLURM cancels the group job instead of leaving it pending forever.
group_job=$(sbatch --parsable --dependency=afterok:"$array_job" --kill-on-invalid-dep=yes \
    "${sbatch_options[@]}" "$group_script")
group_job=${group_job%%;*}
echo "participants: job array $array_job ($n tasks); group: job $group_job (starts when all succeeded)"
