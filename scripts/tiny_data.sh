#!/usr/bin/env bash
# The tiny random-init Wan-2.1 (diffusers layout) and the latent shards of 16 synthetic scenes at 64 px, 33 frames,
# under outputs/tiny/ (CPU, about a minute): what configs/gpu_smoke.yaml trains on. Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 WANDB_MODE=offline
OUT=outputs/tiny
python -c "from track2view.testing.tiny import save_tiny_wan; save_tiny_wan('$OUT/tiny-wan')"
python -m track2view.synthetic --out "$OUT/MultiCamVideo" --scenes 16 --cameras 4 --size 64 --frames 33 --seed 0 \
  --workers 2
python -m data_curation.curate --root "$OUT/MultiCamVideo/train" --out "$OUT/shards/tracks" --tracker oracle \
  --pairs-per-scene 3 --num-tracks 256 --seed 0 --workers 2 --samples-per-shard 16
python -m data_curation.precompute --shards "$OUT/shards/tracks" --out "$OUT/shards/latents" \
  --model "$OUT/tiny-wan" --height 64 --width 64 --num-frames 33 --device cpu --dtype float32
