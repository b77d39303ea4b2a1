#!/usr/bin/env bash
# One `bench run` spread over a Slurm job array: array task i of n generates shard i/n of the work
# grid into ONE run directory on a filesystem every node mounts; a last job, started once every
# shard has succeeded, scores the run and builds the report. From a login node:
#
#   export RUN=/shared/runs/i2p-sd14
#   jid=$(sbatch --parsable docs/slurm-example.sh)
#   sbatch --dependency=afterok:"$jid" --gres=gpu:1 --job-name=bench-report \
#          --wrap "bench report $RUN --quiet"
#
# Every task must run the same spec (only --shard differs): each computes the partition on its
# own, so different flags would leave holes or overlaps. A failed or preempted task is rerun with
# `sbatch --array=<i> docs/slurm-example.sh` and generates only what shard i is missing.
# Compute nodes are often offline: download weights first (`huggingface-cli download
# CompVis/stable-diffusion-v1-4`) into an HF_HOME that the nodes share.
#
#SBATCH --job-name=bench-shard
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --output=bench-shard-%A_%a.log
set -euo pipefail

RUN=${RUN:?set RUN to a run directory on the shared filesystem}
# The run spec: what every shard generates. A YAML spec works too: BENCH_ARGS="--config run.yaml".
BENCH_ARGS=${BENCH_ARGS:-"--model sd14 --methods all --prompt-set i2p:path=i2p_benchmark.csv --samples 10"}

# Shards are 0-based: --array=0-7 gives 0/8 ... 7/8 (the minimum is subtracted for --array=1-8).
i=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
n=${SLURM_ARRAY_TASK_COUNT:?run under sbatch --array}

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags, split on purpose
exec bench run $BENCH_ARGS --shard "$i/$n" --out "$RUN" --quiet
