#!/usr/bin/env bash
# The synthetic learning experiment (experiments/synthetic/README.md), stage by stage; every stage skips what is done.
#
#   bash experiments/synthetic/run.sh all                 # data prepare train export generate score
#   (prepare = autoencoder | curate, then model latents; ship and pack: the demo model, what leaves the GPU machine)
#   bash experiments/synthetic/run.sh train generate      # some stages
#   EXP_SCALE=smoke bash experiments/synthetic/run.sh all # the same path at toy sizes on CPU (minutes)
#
# Arms (ARMS): tracks camera none (the comparison) and the ablations tracks_layers2 tracks_layers4 (temporal layers;
# tracks has 8), tracks_first tracks_random (query frames; tracks queries first + last) and tracks_oneway (issue 11:
# one-way attention, `model.attention: one_way`, against tracks' full attention). Each arm trains from the
# same random init with the same steps, batch, data order and seed; arms train side by side on one GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=experiments/synthetic
OUT=${EXP_OUT:-outputs/synthetic}
if [ "${EXP_SCALE:-full}" = smoke ]; then  # toy sizes: checks the whole path on CPU, the numbers mean nothing
  : "${SIZE:=32}" "${FRAMES:=9}" "${TRAIN_SCENES:=4}" "${VAL_SCENES:=1}" "${TEST_SCENES:=2}"
  : "${AE_SECONDS:=5}" "${AE_BATCH:=2}"
  : "${STEPS:=4}" "${BATCH:=2}" "${DEVICE:=cpu}" "${EVAL_STEPS:=2}" "${TRACKS:=64}" "${WORKERS:=2}"
  : "${TRAIN_ARGS:=--trainer.accelerator cpu --trainer.precision 32-true --data.num_workers 0 --data.pin_memory false}"
fi
SIZE=${SIZE:-128} FRAMES=${FRAMES:-25} CAMERAS=${CAMERAS:-4} PAIRS=${PAIRS:-4} TRACKS=${TRACKS:-128}
TRAIN_SCENES=${TRAIN_SCENES:-1200} VAL_SCENES=${VAL_SCENES:-16} TEST_SCENES=${TEST_SCENES:-32}
AE_SECONDS=${AE_SECONDS:-0} AE_BATCH=${AE_BATCH:-16} STEPS=${STEPS:-2000} BATCH=${BATCH:-128} DEVICE=${DEVICE:-cuda}
EVAL_STEPS=${EVAL_STEPS:-30} WORKERS=${WORKERS:-$(nproc)} TRAIN_ARGS=${TRAIN_ARGS:-}
PRECOMPUTE_BATCH=${PRECOMPUTE_BATCH:-32} AE_INIT=${AE_INIT-$HERE/autoencoder_init}
ARMS=${ARMS:-tracks camera none tracks_layers2 tracks_layers4 tracks_first tracks_random}
CACHES=${CACHES-first_block taylorseer}  # step-cache presets the tracks arm also re-renders with (issue 11's quality)
TRAIN_KINDS=pan,tilt,dolly,truck,pedestal,arc  # every camera follows one of these in train and val scenes
TEST_KINDS=pan_truck,arc_dolly                 # held-out families: the test scenes' cameras (source and targets)
# TRACKS: 128 on a 8 x 8 token grid is 2 tracks per token, still denser than the paper's 1,152 on 30 x 52 (0.7 per
# token); at 512 the tracks arms' conditioner cost ~2.5x the whole DiT's FLOPs (README). A pair needs 1/8 of them
# seen in both views (64 of 512 in the first H200 run).
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}  # many processes share the cores

arm_kind() { case $1 in tracks*) echo tracks ;; *) echo "$1" ;; esac; }
arm_args() {  # tracks_oneway: issue 11's one-way attention (source tokens attend to the source only; t = 0 there)
  case $1 in tracks_oneway) echo --model.attention one_way --model.flow_matching.timestep_mode per_token ;; esac
}
arm_queries() { case $1 in tracks_first) echo first ;; tracks_random) echo random ;; *) echo first_last ;; esac; }
arm_config() {
  case $1 in
    tracks_layers2) echo '{"width": 128, "num_layers": 2, "num_heads": 4}' ;;
    tracks_layers4) echo '{"width": 128, "num_layers": 4, "num_heads": 4}' ;;
    tracks*) echo '{"width": 128, "num_layers": 8, "num_heads": 4}' ;;
    *) echo '{}' ;;
  esac
}
schemes() { for arm in $ARMS; do arm_queries "$arm"; done | sort -u; }
# what `generate` writes: every arm, and with `tracks` also `tracks_dropped` (its export with every track marked
# invalid: what the conditioner adds is the difference), `tracks_shifted` (its target tracks moved by SHIFT: not
# scored, track_following.py reads whether the content moved with them) and `tracks+CACHE` per step cache (scored
# against `tracks`)
generated_rows() {
  echo $ARMS
  case " $ARMS " in
    *" tracks "*) echo tracks_dropped tracks_shifted; for cache in $CACHES; do echo "tracks+$cache"; done ;;
  esac
}
SHIFT=${SHIFT:-0.25}  # tracks_shifted: the target tracks moved right by this fraction of the width (track_following.py)
scored_rows() { generated_rows | tr ' ' '\n' | grep -v _shifted; }  # tracks_shifted: track_following.py's alone
row_arm() { local arm=${1%%+*}; arm=${arm%_dropped}; echo "${arm%_shifted}"; }
row_flags() {
  case $1 in
    *_dropped) echo --drop-tracks ;; *_shifted) echo --shift-target-tracks "$SHIFT" ;; *+*) echo --cache "${1#*+}" ;;
  esac
}

stage_data() {  # SPLITS: some of them (the test split is deterministic: render it again where it is scored)
  local split
  for split in ${SPLITS:-train val test}; do
    # shellcheck disable=SC2046
    python -m track2view.synthetic --out "$OUT/data" --split "$split" --cameras "$CAMERAS" --size "$SIZE" \
      --frames "$FRAMES" --workers "$WORKERS" $(split_args "$split")
  done
}
split_args() {
  case $1 in
    train) echo --scenes "$TRAIN_SCENES" --seed 0 --trajectory-kinds "$TRAIN_KINDS" ;;
    val) echo --scenes "$VAL_SCENES" --seed 1 --trajectory-kinds "$TRAIN_KINDS" ;;
    test) echo --scenes "$TEST_SCENES" --seed 2 --trajectory-kinds "$TEST_KINDS" ;;
    *) echo "error: SPLITS holds '$1'; choose among train val test" >&2; exit 2 ;;
  esac
}

stage_autoencoder() {  # AE_INIT (default: the committed autoencoder_init/) as it is, measured; AE_SECONDS > 0 fine-tunes
  # it (AE_INIT= : trains one from a random init; give it AE_SECONDS)
  python "$HERE/autoencoder.py" --train "$OUT/data/train" --test "$OUT/data/test" --config "$HERE/model.json" \
    --out "$OUT/vae" --seconds "$AE_SECONDS" --batch-size "$AE_BATCH" --device "$DEVICE" ${AE_INIT:+--init "$AE_INIT"}
}

stage_model() {  # PATCH: the transformer's spatial patch (model.json's 4 unless set; 2 = Wan-2.1's, 4x the tokens)
  python "$HERE/make_model.py" --vae "$OUT/vae" --config "$HERE/model.json" --out "$OUT/wan" \
    ${PATCH:+--patch "$PATCH"}
}

stage_curate() {
  local scheme split jobs workers
  jobs=$((2 * $(schemes | wc -l))) && workers=$(( WORKERS / jobs > 0 ? WORKERS / jobs : 1 ))
  for scheme in $(schemes); do
    for split in train val; do
      python -m data_curation.curate --root "$OUT/data/$split" --out "$OUT/tracks/$scheme/$split" --tracker oracle \
        --pairs-per-scene "$PAIRS" --num-tracks "$TRACKS" --min-valid-tracks $((TRACKS / 8)) \
        --query-frames "$scheme" --seed 0 --workers "$workers" \
        --samples-per-shard 256 > "$OUT/logs/curate-$scheme-$split.log" 2>&1 &
    done
  done
  wait_all curate
}

stage_latents() {
  local scheme split rank ranks=${PRECOMPUTE_RANKS:-4}
  [ "$DEVICE" = cpu ] && ranks=1
  for scheme in $(schemes); do
    for split in train val; do
      for rank in $(seq 0 $((ranks - 1))); do
        python -m data_curation.precompute --shards "$OUT/tracks/$scheme/$split" --out "$OUT/latents/$scheme/$split" \
          --model "$OUT/wan" --height "$SIZE" --width "$SIZE" --num-frames "$FRAMES" --device "$DEVICE" \
          --dtype float32 --batch-size "$PRECOMPUTE_BATCH" --rank "$rank" --world-size "$ranks" \
          > "$OUT/logs/latents-$scheme-$split-$rank.log" 2>&1 &
      done
    done
  done
  wait_all precompute
}

stage_train() {
  local arm
  for arm in $ARMS; do
    # shellcheck disable=SC2086
    python train.py fit --config "$HERE/train.yaml" --model.model_path "$OUT/wan" \
      --model.conditioning "$(arm_kind "$arm")" --model.conditioning_config "$(arm_config "$arm")" \
      --model.height "$SIZE" --model.width "$SIZE" --model.num_frames "$FRAMES" \
      --data.train_shards "$OUT/latents/$(arm_queries "$arm")/train" \
      --data.val_shards "$OUT/latents/$(arm_queries "$arm")/val" --data.num_tracks "$TRACKS" \
      --data.batch_size "$BATCH" --data.val_batch_size "$BATCH" --trainer.max_steps "$STEPS" \
      --trainer.default_root_dir "$OUT/runs/$arm" --ckpt_path last_or_new $(arm_args "$arm") $TRAIN_ARGS \
      > "$OUT/logs/train-$arm.log" 2>&1 &
  done
  wait_all train
}

stage_export() {  # every arm at one step: EXPORT_STEP, or last.ckpt when all reached the same, else the last common
  local arm name steps
  for arm in $ARMS; do
    [ -f "$OUT/runs/$arm/checkpoints/last.ckpt" ] && continue
    echo "error: arm $arm has no checkpoint yet in $OUT/runs/$arm/checkpoints; train longer (run.sh train resumes)" >&2
    exit 1
  done
  steps=$(for arm in $ARMS; do python -c "import sys; from track2view.training.checkpoints import \
load_training_checkpoint as load; print(load(sys.argv[1])['global_step'])" "$OUT/runs/$arm/checkpoints/last.ckpt"
  done | sort -u)
  if [ -n "${EXPORT_STEP:-}" ]; then  # a step to compare at, e.g. another run's: its step*.ckpt in every arm
    name=$(printf 'step%07d' "$EXPORT_STEP")
    for arm in $ARMS; do
      [ -f "$OUT/runs/$arm/checkpoints/$name.ckpt" ] && continue
      echo "error: EXPORT_STEP=$EXPORT_STEP: arm $arm has no $name.ckpt; train to that step or choose a saved one" >&2
      exit 1
    done
  elif [ "$(echo "$steps" | wc -l)" = 1 ]; then
    name=last
  else  # a time limit stopped the arms at different steps
    name=$(for arm in $ARMS; do ls "$OUT/runs/$arm/checkpoints" | grep -o '^step[0-9]*' | sort | tail -n 1; done \
           | sort | head -n 1)
  fi
  echo "arms compared at $name.ckpt (last.ckpt steps: $(echo $steps))"
  for arm in $ARMS; do
    python train.py export --ckpt "$OUT/runs/$arm/checkpoints/$name.ckpt" --out "$OUT/exports/$arm" \
      > "$OUT/logs/export-$arm.log" 2>&1 &
  done
  wait_all export
}

stage_prepare() {  # the autoencoder trains on the GPU while the CPUs curate; then the model and the latents
  (stage_autoencoder > "$OUT/logs/autoencoder.log" 2>&1) &
  stage_curate
  wait_all autoencoder
  stage_model
  stage_latents
}

stage_ship() { python "$HERE/ship.py" --model "$OUT/wan" --export "$OUT/exports/tracks" --out "$OUT/shipped"; }

stage_pack() {  # what leaves the GPU machine: one tar in 15 MiB parts (it returns 64 MiB: 16 MiB files), PACK=empty dir
  if [ -n "$(ls -A "${PACK:?give PACK=a new or empty folder}" 2>/dev/null)" ]; then
    echo "error: PACK=$PACK is not empty; give a new or empty folder" >&2; exit 2
  fi
  mkdir -p "$PACK"
  local arm members=(eval/manifest.json logs vae/autoencoder.json)
  [ -d "$OUT/shipped" ] && members+=(shipped)  # `ship` ran
  for arm in $ARMS; do members+=("runs/$arm/logs"); done
  for arm in $(generated_rows); do members+=("eval/generated/$arm"); done
  # the test split stays behind (`SPLITS=test run.sh data` renders it again where it is scored); its checksums travel
  (cd "$OUT/data/test" && find . -type f ! -name tracks.npz | sort | xargs sha256sum) > "$OUT/logs/test-data.sha256"
  tar -C "$OUT" --exclude=tracks.npz -cf - "${members[@]}" \
    | split -b 15M -d - "$PACK/pack.tar." \
    || { rm -f "$PACK"/pack.tar.*; echo "error: pack failed (above); nothing left in $PACK" >&2; exit 1; }
  local parts && parts=$(ls "$PACK" | wc -l)
  echo "packed $(du -cb "$PACK"/pack.tar.* | tail -n 1 | cut -f1) bytes in $parts parts; unpack: cat pack.tar.* | tar -x"
  if [ "$parts" -gt 4 ]; then
    rm -f "$PACK"/pack.tar.*
    echo "error: $parts parts, the device returns 64 MiB (4 parts): set fewer ARMS or TEST_SCENES" >&2; exit 2
  fi
}

write_manifest() {
  python evaluate.py manifest synthetic --root "$OUT/data/test" --targets-per-scene $((CAMERAS - 1)) \
    --out "$OUT/eval/manifest.json"
}

stage_generate() {
  local row arm
  write_manifest
  for row in $(generated_rows); do
    arm=$(row_arm "$row")
    # shellcheck disable=SC2046
    python evaluate.py generate --manifest "$OUT/eval/manifest.json" --model "$OUT/wan" \
      --checkpoint "$OUT/exports/$arm" --tracker oracle --query-frames "$(arm_queries "$arm")" --num-queries "$TRACKS" \
      --height "$SIZE" --width "$SIZE" --steps "$EVAL_STEPS" --guidance 1 --device "$DEVICE" --dtype float32 \
      $(row_flags "$row") --out "$OUT/eval/generated/$row" > "$OUT/logs/generate-$row.log" 2>&1 &
  done
  wait_all generate
}

stage_score() {  # CPU is fine; the manifest is written again, rooted where the test videos are now; rows side by side
  local row vae=$OUT/vae
  [ -f "$vae/config.json" ] || vae=$OUT/shipped/wan/vae  # unpacked here: the shipped float16 copy of the same weights
  # no ship in the pack: with AE_SECONDS=0 the run's autoencoder is AE_INIT as it is
  [ -f "$vae/config.json" ] || { [ "$AE_SECONDS" = 0 ] && [ -n "$AE_INIT" ] && vae=$AE_INIT; }
  [ -f "$vae/config.json" ] || { echo "error: no autoencoder for the baselines in $OUT/vae or $OUT/shipped/wan/vae;" \
    "unpack a pack with them, or run the prepare stage" >&2; exit 2; }
  write_manifest
  python "$HERE/summarize.py" baselines --manifest "$OUT/eval/manifest.json" --vae "$vae" --out "$OUT/eval/generated"
  for row in $(scored_rows) source_copy autoencoder target_copy; do  # summarize.py's BASELINES too
    score_job "$row" scores --metrics reference,camera_accuracy,matched_pixels --matcher sift --pose-threads 1
  done
  for row in $(generated_rows | grep +); do  # a step cache's re-render against the exact one
    score_job "$row" scores_vs_exact --metrics reference_pixels --against "$OUT/eval/generated/$(row_arm "$row")"
  done
  wait_all score
  python "$HERE/summarize.py" table --out-dir "$OUT" --arms "$(scored_rows | xargs)" \
    --sheet "$OUT/eval/contact_sheet.png"
  if [ -d "$OUT/eval/generated/tracks_shifted" ]; then  # does the tracks arm place content where its tracks say?
    python "$HERE/track_following.py" --out-dir "$OUT" --shift "$SHIFT" | tee "$OUT/eval/track_following.txt"
  fi
}

score_job() {  # ROW SCORES [evaluate.py score options]: scores ROW's clips into eval/SCORES/ROW, in the background
  local row=$1 scores=$2 && shift 2
  python evaluate.py score --manifest "$OUT/eval/manifest.json" --generated "$OUT/eval/generated/$row" \
    --out "$OUT/eval/$scores/$row" --no-progress --device cpu "$@" > "$OUT/logs/$scores-$row.log" 2>&1 &
}

wait_all() {  # wait for every background job; fail (naming the logs) if any failed
  local failed=0 pid
  for pid in $(jobs -p); do wait "$pid" || failed=1; done
  if [ "$failed" = 1 ]; then echo "error: a job of stage $1 failed; see its log in $OUT/logs/" >&2; exit 1; fi
}

trap 'kill $(jobs -p) 2>/dev/null; exit 143' TERM INT  # a `timeout` stops the stage's background jobs too
mkdir -p "$OUT/logs"
stages=()
for stage in "${@:-all}"; do  # `all` expands in place: `all ship` runs ship too
  if [ "$stage" = all ]; then stages+=(data prepare train export generate score); else stages+=("$stage"); fi
done
for stage in "${stages[@]}"; do
  echo "== $stage ($(date +%T))"
  "stage_$stage"
done
