#!/usr/bin/env bash
# Recipe ablation on one GPU, about 4 minutes: five trainings at once, each on the people of LFW View 2
# sets 6-10 only (the "halves" unit of benchmarks/lfw_protocol.py), each scoring folds 1-5 (3,000 pairs of
# people it never saw), with the same time budget. Only the recipe differs:
#   base      the recipe of scripts/gpu_session.sh (112 px, lr 5e-4, margin 0.6, hard mining, P x K = 32 x 4)
#   px160     the 112 px crops upsampled to 160 px (ImageNet features at a scale nearer their 224 px)
#   bblr01    the backbone's learning rate 0.1 x the head's (keep more of the ImageNet features)
#   nocal     no identities held out for calibration (10% more people to train on)
#   pk64      P x K = 64 x 4 (twice the identities, so more negatives, per batch)
#   SHARED=../shared OUT=runs/ablation bash scripts/gpu_ablation.sh
# Then: python benchmarks/ablation_table.py OUT/units  (5-fold protocol accuracy on folds 1-5 per recipe).
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
OUT=${OUT:-runs/ablation}
SCRATCH=${SCRATCH:-$OUT/work}
DEADLINE=${DEADLINE:-230}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-112}
BIG=${BIG:-160}
PY=${PYTHON:-python3}
ZIP=$SHARED/data/lfw/lfw-deepfunneled-112.zip
CKPT=$SHARED/weights/mobilenet_v2-b0353104.pth
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
mkdir -p "$OUT" "$SCRATCH/units"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$OUT/ablation.log") 2>&1
echo "== $(date -u); deadline ${DEADLINE}s"
$PY scripts/decode_cache.py "$ZIP" "$SCRATCH/cache" "$SIZE" "$BIG"
BUDGET=$($PY -c "print(round(($DEADLINE - $(elapsed) - 30) / 60, 2))")
echo "== 5 trainings at once, ${BUDGET} min each ($(elapsed)s)"
export OMP_NUM_THREADS=1
run() {  # name, extra options
  local name=$1; shift
  $PY benchmarks/lfw_protocol.py --name "ablation-$name" --scheme halves --folds 1 --work-dir "$SCRATCH/units/$name" \
    --output "$SCRATCH/units/$name/merged.json" --data "$ZIP" --people "$SHARED/data/lfw/people.txt" \
    --pairs "$SHARED/data/lfw/pairs.txt" --pretrained "$CKPT" --decode-cache "$SCRATCH/cache" --lr 5e-4 \
    --margin 0.6 --mining hard --epochs 1000 --time-budget "$BUDGET" --device "$DEVICE" --seed 0 --concurrent 5 \
    --quiet "$@" > "$SCRATCH/units/$name.log" 2>&1 &
}
mkdir -p "$SCRATCH"/units/{base,px160,bblr01,nocal,pk64}
run base --input-size "$SIZE" --pk 32 4
run px160 --input-size "$BIG" --pk 32 4
run bblr01 --input-size "$SIZE" --pk 32 4 --backbone-lr-factor 0.1
run nocal --input-size "$SIZE" --pk 32 4 --calibration-fraction 0
run pk64 --input-size "$SIZE" --pk 64 4
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do
  sleep 5
  if [ "$(elapsed)" -gt $(( DEADLINE + 15 )) ]; then echo "past the deadline: stopping"; kill $(jobs -rp) 2>/dev/null; fi
done
echo "== done training ($(elapsed)s)"
for n in base px160 bblr01 nocal pk64; do tail -n 2 "$SCRATCH/units/$n.log"; done
mkdir -p "$SCRATCH/pack"
for n in base px160 bblr01 nocal pk64; do
  cp "$SCRATCH/units/$n/unit-sets6-10.json" "$SCRATCH/pack/$n.json" 2>/dev/null
  cp "$SCRATCH/units/$n.log" "$SCRATCH/pack/$n.log"
done
tar -czf "$OUT/ablation-units.tar.gz" -C "$SCRATCH" pack
$PY benchmarks/ablation_table.py "$SCRATCH/pack" | tee "$OUT/ablation-table.txt"
echo "== done ($(elapsed)s)"
