#!/usr/bin/env bash
# The whole Track2View path on CPU, from nothing, in a few minutes:
#   synthetic multi-camera scenes -> paired-track shards (oracle tracker) -> latent shards (tiny Wan VAE/UMT5)
#   -> LoRA + conditioner training (tiny random-init Wan) -> export -> a re-rendered video on disk.
# Every stage is resumable: re-running skips what is already done. Outputs go to outputs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 WANDB_MODE=offline
OUT=${DEMO_OUT:-outputs/demo}
SIZE=${DEMO_SIZE:-64}
FRAMES=${DEMO_FRAMES:-33}
STEPS=${DEMO_STEPS:-300}

echo "== 1/6 tiny random-init Wan-2.1 (diffusers layout) -> $OUT/tiny-wan"
python -c "from track2view.testing.tiny import save_tiny_wan; save_tiny_wan('$OUT/tiny-wan')"

echo "== 2/6 synthetic MultiCamVideo scenes -> $OUT/MultiCamVideo"
python -m track2view.synthetic --out "$OUT/MultiCamVideo" --scenes 16 --cameras 4 --size "$SIZE" \
  --frames "$FRAMES" --seed 0 --workers 2

echo "== 3/6 curate paired tracks (oracle tracker) -> $OUT/shards/tracks"
python -m data_curation.curate --root "$OUT/MultiCamVideo/train" --out "$OUT/shards/tracks" --tracker oracle \
  --pairs-per-scene 3 --num-tracks 256 --seed 0 --workers 2 --samples-per-shard 16

echo "== 4/6 precompute latents (tiny VAE + UMT5) -> $OUT/shards/latents"
python -m data_curation.precompute --shards "$OUT/shards/tracks" --out "$OUT/shards/latents" \
  --model "$OUT/tiny-wan" --height "$SIZE" --width "$SIZE" --num-frames "$FRAMES" --device cpu --dtype float32

echo "== 5/6 train $STEPS steps on CPU -> $OUT/train"
python train.py fit --config configs/demo.yaml --trainer.max_steps "$STEPS" \
  --trainer.default_root_dir "$OUT/train" --data.train_shards "$OUT/shards/latents" \
  --data.val_shards "$OUT/shards/latents" --model.model_path "$OUT/tiny-wan" --ckpt_path last_or_new
python train.py export --ckpt "$OUT/train/checkpoints/last.ckpt" --out "$OUT/export"

echo "== 6/6 re-render a scene's first camera along arc_left -> $OUT/rerender.mp4"
VIDEO=$(find "$OUT/MultiCamVideo/train" -path '*/videos/cam01.mp4' | sort | head -n 1)
python infer.py --video "$VIDEO" --tracker oracle \
  --trajectory arc_left --amount 20 --checkpoint "$OUT/export" --model "$OUT/tiny-wan" \
  --height "$SIZE" --width "$SIZE" --num-frames "$FRAMES" --steps 10 --side-by-side --overlay \
  --out "$OUT/rerender.mp4" --overwrite
echo "done: $OUT/rerender.mp4 (plus _side_by_side.mp4 and _overlay.mp4 beside it)"
