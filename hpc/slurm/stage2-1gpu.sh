#!/bin/bash
#SBATCH --job-name=pointllm-stage2
#SBATCH --account=<group>
#SBATCH --partition=<queue>
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --output=%x-%j.out
# PointLLM stage 2 training on 1 GPU (Slurm).
# Rendered by `pointllm hpc render`; render again instead of editing:
#   pointllm hpc render --scheduler slurm --job stage2 --group '<group>' --queue '<queue>' -o hpc/slurm/stage2-1gpu.sh
# Submit from the project root: sbatch hpc/slurm/stage2-1gpu.sh
# 600 s before the wall time training saves a checkpoint and this job submits
# itself again to continue; delete the queued follow-up job to end the chain.
set -euo pipefail

# Fixed when rendered; the environment may override the first two.
JOB_SCRIPT="${POINTLLM_JOB_SCRIPT:-hpc/slurm/stage2-1gpu.sh}"
MAX_RESUBMITS="${POINTLLM_MAX_RESUBMITS:-20}"
RESUBMITS="${POINTLLM_RESUBMITS:-0}"
NEXT_JOB_SCRIPT=''
RESUBMIT_EXIT_CODE=75  # pointllm train: stopped by a signal, checkpoint saved

cd "${SLURM_SUBMIT_DIR:-$PWD}"
if [[ ! -f $JOB_SCRIPT ]]; then
  echo "pointllm job: $JOB_SCRIPT not found in $PWD: submit from the directory it was rendered for (or set POINTLLM_JOB_SCRIPT)" >&2
  exit 1
fi
source .venv/bin/activate

train=(pointllm train --config configs/stage2_lora_1gpu_24gb.yaml --resume)

# USR1 is the early warning (only this shell gets it): pass it to training. SIGTERM goes
# to every process of the job, training included: trap it only to stay alive.
forward_stop() { kill -USR1 "$train_pid" 2>/dev/null || true; }
train_pid=""
trap forward_stop USR1
trap : TERM

"${train[@]}" &
train_pid=$!
while :; do
  status=0
  wait "$train_pid" || status=$?
  # A trapped signal ends `wait` early (status > 128) while training is still saving.
  if (( status > 128 )) && kill -0 "$train_pid" 2>/dev/null; then continue; fi
  break
done

if (( status == RESUBMIT_EXIT_CODE )); then
  if (( RESUBMITS >= MAX_RESUBMITS )); then
    echo "pointllm job: training was stopped $((RESUBMITS + 1)) times; not resubmitting (POINTLLM_MAX_RESUBMITS=$MAX_RESUBMITS)" >&2
    exit "$status"
  fi
  echo "pointllm job: checkpoint saved before the wall time; resubmitting $JOB_SCRIPT ($((RESUBMITS + 1))/$MAX_RESUBMITS)"
  sbatch --export="ALL,POINTLLM_RESUBMITS=$((RESUBMITS + 1))" "$JOB_SCRIPT"
  exit 0
fi
if (( status == 0 )) && [[ -n $NEXT_JOB_SCRIPT ]]; then
  echo "pointllm job: training finished; submitting $NEXT_JOB_SCRIPT"
  env -u POINTLLM_RESUBMITS -u POINTLLM_JOB_SCRIPT sbatch "$NEXT_JOB_SCRIPT"
fi
exit "$status"
