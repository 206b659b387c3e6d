#!/usr/bin/env bash
# The whole Track2View path on CPU, from a fresh clone, in a few minutes, starting from the shipped synthetic model
# (experiments/synthetic/shipped: a small Wan-2.1-architecture model trained from scratch on synthetic scenes on one
# GPU, docs/results.md):
#   synthetic multi-camera scenes -> paired-track shards (oracle tracker) -> latent shards (the shipped VAE + text
#   encoder) -> a short LoRA + conditioner fine-tune -> export -> a held-out scene re-rendered along a preset.
# Every stage is resumable: re-running skips what is already done. Outputs go to outputs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} HF_HUB_OFFLINE=1 WANDB_MODE=offline
OUT=${DEMO_OUT:-outputs/demo}
SHIPPED=experiments/synthetic/shipped
STEPS=${DEMO_STEPS:-30}
SIZE=128 FRAMES=25  # the shipped model's (experiments/synthetic/run.sh)

echo "== 1/5 synthetic scenes: 4 to fine-tune on, 1 held out (the experiment's test split) -> $OUT/scenes"
python -m track2view.synthetic --out "$OUT/scenes" --split train --scenes 4 --cameras 4 --size "$SIZE" \
  --frames "$FRAMES" --seed 3 --workers 2 --trajectory-kinds pan,tilt,dolly,truck,pedestal,arc
python -m track2view.synthetic --out "$OUT/scenes" --split test --scenes 1 --cameras 4 --size "$SIZE" \
  --frames "$FRAMES" --seed 2 --workers 1 --trajectory-kinds pan_truck,arc_dolly

echo "== 2/5 curate paired tracks (oracle tracker) -> $OUT/shards/tracks"
python -m data_curation.curate --root "$OUT/scenes/train" --out "$OUT/shards/tracks" --tracker oracle \
  --pairs-per-scene 2 --num-tracks 128 --min-valid-tracks 16 --seed 0 --workers 2 --samples-per-shard 4

echo "== 3/5 precompute latents (the shipped VAE + text encoder) -> $OUT/shards/latents"
python -m data_curation.precompute --shards "$OUT/shards/tracks" --out "$OUT/shards/latents" \
  --model "$SHIPPED/wan" --height "$SIZE" --width "$SIZE" --num-frames "$FRAMES" --device cpu --dtype float32

echo "== 4/5 fine-tune $STEPS steps on CPU from the shipped model -> $OUT/train, $OUT/export"
python train.py fit --config configs/synthetic_finetune.yaml --trainer.max_steps "$STEPS" \
  --trainer.default_root_dir "$OUT/train" --data.train_shards "$OUT/shards/latents" \
  --data.val_shards "$OUT/shards/latents" --ckpt_path last_or_new
python train.py export --ckpt "$OUT/train/checkpoints/last.ckpt" --out "$OUT/export"

echo "== 5/5 re-render the held-out scene's first camera along arc_left -> $OUT/rerender.mp4"
VIDEO=$(find "$OUT/scenes/test" -path '*/videos/cam01.mp4' | sort | head -n 1)
PROMPT=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['caption'])" \
  "$(dirname "$(dirname "$VIDEO")")/ground_truth/scene.json")  # the scene's caption, as the model trained with
python infer.py --video "$VIDEO" --tracker oracle --trajectory arc_left --amount 20 --checkpoint "$OUT/export" \
  --model "$SHIPPED/wan" --height "$SIZE" --width "$SIZE" --num-frames "$FRAMES" --num-queries 128 --steps 30 \
  --guidance 1 --prompt "$PROMPT" --side-by-side --overlay --out "$OUT/rerender.mp4" --overwrite
echo "done: $OUT/rerender.mp4 (plus _side_by_side.mp4 and _overlay.mp4 beside it)"
