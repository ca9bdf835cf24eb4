#!/usr/bin/env bash
# Train the embedded tiny-world model on one GPU: the autoencoder, then the world model (resumable pieces).
# Usage: bash bench/gpu_train.sh VAE_MINUTES WORLD_MINUTES [extra train_world arguments...]
# (VAE_MINUTES=0 keeps the autoencoder in place; STATE_IN=DIR resumes from a saved train_state)
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
W=runtime/weights/tiny-world
mkdir -p $W
if [ -d "${STATE_IN:-}" ]; then mkdir -p $W/train_state && cp $STATE_IN/*.pt $W/train_state/; fi
if [ "$1" != "0" ]; then
  timeout $(( ${1%.*} * 60 + 90 )) python3 -m runtime.train.train_vae --out $W --minutes $1 --device cuda 2>&1 | tail -12
fi
timeout $(( ${2%.*} * 60 + 150 )) python3 -m runtime.train.train_world --out $W --minutes $2 --device cuda \
  --pool 96 --refresh-every 20 --refresh 8 "${@:3}" 2>&1 | grep -v "^{" | tail -6
tail -3 $W/train_log.jsonl
mkdir -p $OUT/ts
cp $W/vae.safetensors $W/model.safetensors $W/train_log.jsonl $OUT/ 2>/dev/null
[ "$1" != "0" ] && cp $W/log.jsonl $OUT/vae_log.jsonl
cp $W/train_state/*.pt $OUT/ts/
ls -la $OUT $OUT/ts
