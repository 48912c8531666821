#!/usr/bin/env bash
# Everything facesearch measures on a GPU, in one call of about 8 minutes on one H200:
#   1. decode the LFW pack once into a shared cache (facesearch train --decode-cache),
#   2. training-step throughput at 112 px, facesearch's step (eager and CUDA graph, bf16 and fp32) against a
#      per-image PIL pipeline, and the check that the CUDA graph step trains like the eager one
#      (benchmarks/train_speed.py),
#   3. exact GPU search in torch, 1M and 10M faces (python -m benchmarks.gpu),
#   4. the identity-disjoint LFW View 2 protocol: 10 trainings, the one that scores fold k never sees a person
#      of people.txt set k (benchmarks/lfw_protocol.py --scheme tenfold), and the built-in model trained on all
#      LFW people (facesearch train), all 11 at once on the one GPU, each with the same time budget,
#   5. merge the 10 folds into benchmarks/results/lfw-NAME.json and print a table.
#
#   SHARED=../shared OUT=runs/gpu bash scripts/gpu_session.sh
#   # the run behind benchmarks/results/lfw-mnv2-160-tenfold.json (92.15% +- 0.88; 160 px is facesearch
#   # train's default): all of the call's time for the 10 fold trainings, 493 s on one H200
#   SHARED=../shared OUT=runs/gpu NAME=mnv2-160-tenfold SIZE=160 GRAPH=0 SEARCH=0 DEFAULT_MODEL=0 DEADLINE=540 \
#     bash scripts/gpu_session.sh
#   # why: a 160 px image costs about 1.6x a 112 px one (ablation: 1,847 vs 2,952 img/s). The 112 px run's 11
#   # trainings shared 13,880 img/s, so at 160 px each gets ~790 img/s; with GRAPH=auto and the search
#   # (steps 2-3 time out at 120 s + 75 s) that leaves ~5 minutes, ~30 epochs of its ~7,300 images. With
#   # GRAPH=0 (step 2 eager only, 60 s), SEARCH=0 and DEFAULT_MODEL=0: 10 trainings, ~870 img/s, ~7 minutes,
#   # ~50 epochs; the ablation's +1.6 points at 160 px came from ~330,000 images seen per training (2,573 steps of 128), which
#   # this reaches. (That was the estimate before the run; measured: 935 img/s each, 6.9 minutes, 69-71 epochs
#   # of ~5,400 images, 371,000-381,000 images per training.) GRAPH=auto, SEARCH_SIZES=1M and DEFAULT_MODEL=1
#   # are for a later call.
#
# GRAPH: 0 (default) eager training steps; 1 the CUDA graph step (train --cuda-graph) without asking; auto:
# the graph step only if step 2's check passed (it trains like the eager one, in fp32 and in bf16:
# benchmarks/train_speed.py graph_check) and step 2 measured it faster than the eager step at the trainings'
# AMP (a heuristic: step 2 is one process at 112 px, the trainings share the GPU at SIZE). AMP: auto (bf16,
# the recipe) or off. SEARCH=0 skips step 3; DEFAULT_MODEL=0 skips the built-in model's training (10
# trainings share the GPU instead of 11).
#
# SHARED holds data/lfw/{lfw-deepfunneled-112.zip,people.txt,pairs.txt} and weights/mobilenet_v2-b0353104.pth
# (see ../shared/docs/data.md). DEADLINE is the number of seconds from the start by which everything has
# finished; the trainings get what is left after steps 1-3. Needs torch + torchvision only (no faiss, no SQL).
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
OUT=${OUT:-runs/gpu}
NAME=${NAME:-mnv2-tenfold}
DEADLINE=${DEADLINE:-500}
DEVICE=${DEVICE:-cuda}
LR=${LR:-5e-4}
# Input side in pixels. benchmarks/results/lfw-mnv2-tenfold.json (90.87%, with the built-in model in the same
# call) ran at SIZE=112, the default here so that it reproduces; the ablation (scripts/gpu_ablation.sh,
# benchmarks/results/ablation-halves-h200.json) found 160 px 1.6 points better, and the run at
# NAME=mnv2-160-tenfold SIZE=160 gave 92.15% (benchmarks/results/lfw-mnv2-160-tenfold.json).
SIZE=${SIZE:-112}
PK=${PK:-32 4}      # identities x images per batch
GRAPH=${GRAPH:-0}
AMP=${AMP:-auto}    # mixed precision of the trainings (auto: bf16 on a GPU that has it)
SEARCH=${SEARCH:-1}
SEARCH_SIZES=${SEARCH_SIZES:-1M,10M}
DEFAULT_MODEL=${DEFAULT_MODEL:-1}
case "$GRAPH:$AMP:$SEARCH:$DEFAULT_MODEL" in
  [01]:auto:[01]:[01] | [01]:off:[01]:[01] | auto:auto:[01]:[01] | auto:off:[01]:[01]) ;;
  *) echo "bad settings: GRAPH=$GRAPH (0, 1, auto) AMP=$AMP (auto, off) SEARCH=$SEARCH DEFAULT_MODEL=$DEFAULT_MODEL (0, 1)" >&2
     exit 2 ;;
esac
GRAPH_ASKED=$GRAPH
PY=${PYTHON:-python3}
ZIP=$SHARED/data/lfw/lfw-deepfunneled-112.zip
PEOPLE=$SHARED/data/lfw/people.txt
PAIRS=$SHARED/data/lfw/pairs.txt
CKPT=$SHARED/weights/mobilenet_v2-b0353104.pth
SCRATCH=${SCRATCH:-$OUT/work}   # decoded cache, per-fold models and logs; OUT gets 7 files at the end
CACHE=$SCRATCH/cache
WORK=$SCRATCH/units
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$OUT/session.log") 2>&1
echo "== $(date -u) $(uname -n); deadline ${DEADLINE}s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"

echo "== 1. decode LFW once ($(elapsed)s)"
$PY scripts/decode_cache.py "$ZIP" "$CACHE" "$SIZE"

echo "== 2. training-step throughput at 112 px ($(elapsed)s)"
# with GRAPH=0 as in the recorded run of benchmarks/results/lfw-mnv2-tenfold.json: eager steps only, 60 s
SPEED_ARGS=(--no-graph); SPEED_T=60
[ "$GRAPH" != 0 ] && SPEED_ARGS=(--graph) && SPEED_T=120
rm -f "$OUT/train-speed-gpu.json"  # GRAPH=auto must never read an earlier session's check
timeout $SPEED_T $PY benchmarks/train_speed.py --device "$DEVICE" --size 112 --batch $PK --steps 10 --rounds 3 \
  --warmup 5 --data "$ZIP" --weights "$CKPT" --output "$OUT/train-speed-gpu.json" "${SPEED_ARGS[@]}" \
  || echo "train_speed failed ($?)"
if [ "$GRAPH" = auto ]; then
  GRAPH=$($PY -c '
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    speed = {x["mode"]: x["images_per_s"] for x in r["results"]}
    sfx = "-fp32" if sys.argv[2] == "off" else ""
    print(int(r["cuda_graph_check"]["cuda"]["ok"] is True and speed["facesearch-graph" + sfx] > speed["facesearch" + sfx]))
except Exception:
    print(0)
' "$OUT/train-speed-gpu.json" "$AMP")
  echo "   GRAPH=auto -> GRAPH=$GRAPH"
fi
GRAPH_FLAG=(); [ "$GRAPH" = 1 ] && GRAPH_FLAG=(--cuda-graph)

if [ "$SEARCH" = 1 ]; then
  echo "== 3. exact GPU search ($(elapsed)s)"
  timeout 75 $PY -m benchmarks.gpu --sizes "$SEARCH_SIZES" --out "$OUT/gpu-search.json" || echo "gpu search failed ($?)"
fi

LEFT=$(( DEADLINE - $(elapsed) - 45 ))
BUDGET=$($PY -c "print(round($LEFT / 60, 2))")
N=$(( 10 + DEFAULT_MODEL ))
echo "== 4. $N trainings at once, ${BUDGET} min each, GRAPH=$GRAPH ($(elapsed)s)"
export OMP_NUM_THREADS=1
COMMON=(--data "$ZIP" --people "$PEOPLE" --pairs "$PAIRS" --pretrained "$CKPT" --decode-cache "$CACHE"
        --backbone mobilenet_v2 --input-size "$SIZE" --embedding-dim 128 --pk $PK --lr "$LR" --margin 0.6
        --mining hard --epochs 1000 --time-budget "$BUDGET" --device "$DEVICE" --seed 0 --concurrent $N --quiet
        --amp "$AMP" "${GRAPH_FLAG[@]}")
pids=()
for k in 1 2 3 4 5 6 7 8 9 10; do
  $PY benchmarks/lfw_protocol.py --name "$NAME" --scheme tenfold --folds $k --work-dir "$WORK" "${COMMON[@]}" \
    --output "$OUT/lfw-$NAME.json" \
    > "$WORK/fold$k.log" 2>&1 &
  pids+=($!)
done
rm -rf "$SCRATCH/default-model" "$WORK/default-model.log" "$OUT/default-model.json" "$OUT/default-model.tar"
if [ "$DEFAULT_MODEL" = 1 ]; then
$PY -c "from facesearch.cli.train import train; train()" "$ZIP" \
  --out "$SCRATCH/default-model" --pretrained "$CKPT" \
  --decode-cache "$CACHE" --backbone mobilenet_v2 --input-size "$SIZE" --embedding-dim 128 --pk $PK --lr "$LR" \
  --margin 0.6 --epochs 1000 --time-budget "$BUDGET" --device "$DEVICE" --seed 0 --json --amp "$AMP" "${GRAPH_FLAG[@]}" \
  --name facesearch-mobilenet_v2-lfw-all \
  --notes "Trained by scripts/gpu_session.sh on all LFW deep-funneled 112 px people with at least 2 images (LFW: a research benchmark of news photos, no licence file), 10% of them held out to calibrate the threshold. It has seen LFW's test people, so it is never scored on LFW; the recipe's LFW accuracy comes from the identity-disjoint protocol (benchmarks/results/lfw-$NAME.json)." \
  > "$OUT/default-model.json" 2> "$WORK/default-model.log" &
pids+=($!)
fi
i=0
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do
  sleep 5; i=$((i + 1))
  if [ $((i % 6)) -eq 0 ]; then
    echo "   $(elapsed)s: $(jobs -rp | wc -l) running; $(ls "$WORK"/unit-*.json 2>/dev/null | wc -l) folds done;" \
      "GPU $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
  fi
  if [ "$(elapsed)" -gt $(( DEADLINE + 20 )) ]; then echo "past the deadline: stopping"; kill "${pids[@]}" 2>/dev/null; fi
done
for k in 1 2 3 4 5 6 7 8 9 10; do tail -n 2 "$WORK/fold$k.log"; done
[ -f "$WORK/default-model.log" ] && tail -n 3 "$WORK/default-model.log"

echo "== 5. merge ($(elapsed)s)"
$PY benchmarks/lfw_protocol.py --name "$NAME" --scheme tenfold --merge --work-dir "$WORK" \
  --output "$OUT/lfw-$NAME.json" --concurrent $N \
  --record-command "SHARED=../shared OUT=runs/gpu NAME=$NAME SIZE=$SIZE GRAPH=$GRAPH_ASKED AMP=$AMP SEARCH=$SEARCH SEARCH_SIZES=$SEARCH_SIZES DEFAULT_MODEL=$DEFAULT_MODEL DEADLINE=$DEADLINE LR=$LR bash scripts/gpu_session.sh" \
  || echo "merge failed"
tar -czf "$OUT/units.tar.gz" -C "$SCRATCH" --exclude='model-*' units 2>/dev/null
[ -f "$SCRATCH/default-model/weights.pt" ] && \
  tar -cf "$OUT/default-model.tar" -C "$SCRATCH" default-model/model.json default-model/weights.pt
rm -rf "$CACHE"
$PY - "$OUT" "$NAME" <<'EOF'
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
print("\n=== summary")
p = out / f"lfw-{name}.json"
if p.is_file():
    r = json.loads(p.read_text())
    print(f"LFW View 2, identity-disjoint 10-fold: {100 * r['mean_accuracy']:.2f}% +- {100 * r['std_accuracy']:.2f} "
          f"AUC {r['auc']:.4f} TAR@FAR1e-3 {r['tar_at_far_1e-3']:.3f}")
    print("  folds:", " ".join(f"{100 * a:.1f}" for a in r["fold_accuracy"]))
    if "without_flip_average" in r:
        w = r["without_flip_average"]
        print(f"  without flip average: {100 * w['mean_accuracy']:.2f}% +- {100 * w['std_accuracy']:.2f}")
    print(f"  own thresholds: {100 * r['accuracy_with_each_models_own_calibrated_threshold']:.2f}%; "
          f"per training {r['images_per_s']:.0f} img/s, all at once {r.get('aggregate_images_per_s', 0):.0f} img/s")
else:
    print("no merged LFW result")
d = out / "default-model.json"
try:
    s = json.loads(d.read_text())
    t = s["training"]
    print(f"default model: {t['people']} people, {t['images']} images, {t['steps']} steps, {t['images_per_s']:.0f} img/s, "
          f"threshold {s['threshold']:.4f}, held-out accuracy {s['calibration']['accuracy']:.4f}")
except Exception as e:
    print(f"default model: none ({e})")
for f in ("train-speed-gpu.json", "gpu-search.json"):
    try:
        r = json.loads((out / f).read_text())
    except Exception as e:
        print(f"{f}: none ({e})")
        continue
    for row in r.get("results", r.get("queries", [])):
        print(f"{f}: " + ", ".join(f"{k}={row[k]}" for k in ("mode", "label", "gallery", "batch", "images_per_s", "p50_ms")
                                   if k in row))
    c = (r.get("cuda_graph_check") or {}).get("cuda")
    if c:
        print(f"{f}: cuda graph check ok={c['ok']} max loss rel diff {c['max_loss_rel_diff']:.2e}, "
              f"weights apart/moved {c['param_diff_ratio']:.2e}")
EOF
echo "== done ($(elapsed)s)"
