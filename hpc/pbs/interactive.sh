#!/bin/bash
# An interactive shell on a GPU compute node (PBS).
# Rendered by `pointllm hpc render`; render again instead of editing:
#   pointllm hpc render --scheduler pbs --job interactive --group '<group>' --queue '<queue>'
# Never train on the login node. Once on the compute node:
#   cd <project> && source .venv/bin/activate && pointllm doctor
exec qsub -I -P '<group>' -q '<queue>' -l select=1 -l walltime=2:00:00
