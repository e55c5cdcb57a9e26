#!/bin/bash
# An interactive shell on a GPU compute node (Slurm).
# Rendered by `pointllm hpc render`; render again instead of editing:
#   pointllm hpc render --scheduler slurm --job interactive --group '<group>' --queue '<queue>'
# Never train on the login node. Once on the compute node:
#   cd <project> && source .venv/bin/activate && pointllm doctor
exec srun --account='<group>' --partition='<queue>' --nodes=1 --gpus-per-node=1 --time=2:00:00 --pty bash -l
