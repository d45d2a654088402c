#!/usr/bin/env bash
# The long weight-space runs of docs/accuracy.md §2.1 and docs/inr_cka.md §4, sized for 2 CPU cores.
#
#   experiments/long_runs.sh STAGE [STAGE ...]      stages, in order of use:
#     zoos          generate both accuracy-prediction zoos (resumable)
#     accuracy      GMN (weights; + probe features) and the hparams_gb reference, then the baselines;
#                   merged into docs/results/accuracy.json
#     inr-sets      fit the INR sets: shared init, random init, random init x4 INRs per image
#     inr-ablate    one-seed GMN ablation of the INR levers on the shared-init set (pick GMN_FLAGS)
#     inr           3-seed tables (all methods; the GMN with INR_PROBES probe features) on the shared- and
#                   random-init sets -> docs/results/inr.json
#     cka           the CKA study with the GMN trained with GMN_FLAGS, then with probes (PROBE_FLAGS)
#     spread        the diverse-archs-spread zoo (per-family training budgets) and every accuracy method on it,
#                   the GMN with 64 probes and the residual on the probe-accuracy line first
#     all           zoos accuracy inr-sets inr cka
#
# Start detached and resume by running the same line again (every stage skips finished work):
#   nohup experiments/long_runs.sh all > out/long_runs.log 2>&1 &
#
# Settings (environment): DATA (data), OUT (out), WORKERS (2), SEEDS (3), ZOO_N_VARYING (2000),
# ZOO_N_DIVERSE (3000), ZOO_N_SPREAD (3000), PROBES (16), ACC_FLAGS (GMN/baseline budget), PROBE_HEAD_FLAGS (the probed GMN's read-out of
# the 10 output neurons, their class probabilities and the probe accuracy as a graph input), INR_EPOCHS (40), X4_EPOCHS (15: the x4
# set has 4x the training INRs per epoch),
# GMN_FLAGS (INR levers of the weights-only tables and the CKA study), INR_PROBES (64) and PROBE_FLAGS (the
# probed GMN's levers: dropout 0.2 + input augmentation), RESULTS (docs/results); for smoke runs
# ZOO_FLAGS (e.g. --tiny) and INR_SET_FLAGS (e.g. "--n 120 --steps 50") shrink the data.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data}
OUT=${OUT:-out}
WORKERS=${WORKERS:-2}
SEEDS=${SEEDS:-3}
PROBES=${PROBES:-16}
RESULTS=${RESULTS:-docs/results}
ACC_FLAGS=${ACC_FLAGS:---hidden 32 --layers 3 --batch-size 16 --lr 2e-3 --steps 4000 --eval-every 50 --patience 10 --schedule plateau}
PROBE_HEAD_FLAGS=${PROBE_HEAD_FLAGS:---output-nodes 10 --probe-softmax --probe-acc-input}
INR_EPOCHS=${INR_EPOCHS:-40}
X4_EPOCHS=${X4_EPOCHS:-15}
GMN_FLAGS=${GMN_FLAGS:---input-rotate 10 --input-scale 0.1 --input-shift 0.06}
INR_PROBES=${INR_PROBES:-64}
PROBE_FLAGS=${PROBE_FLAGS:---dropout 0.2 --input-rotate 10 --input-scale 0.1 --input-shift 0.06}
export OMP_NUM_THREADS=1
ZOOS=(--zoo "varying-cnns=$DATA/zoos/varying-cnns" --zoo "diverse-archs=$DATA/zoos/diverse-archs")

log() { echo "[$(date '+%F %T')] $*"; }

stage_zoos() {
  log "zoos"
  # shellcheck disable=SC2086
  python -m inner_tasks.zoo --preset varying-cnns --out "$DATA/zoos/varying-cnns" --n "${ZOO_N_VARYING:-2000}" --workers "$WORKERS" ${ZOO_FLAGS:-}
  # shellcheck disable=SC2086
  python -m inner_tasks.zoo --preset diverse-archs --out "$DATA/zoos/diverse-archs" --n "${ZOO_N_DIVERSE:-3000}" --workers "$WORKERS" ${ZOO_FLAGS:-}
  for z in varying-cnns diverse-archs; do
    python -m experiments.accuracy.diagnose --zoo "$DATA/zoos/$z" --seeds "$SEEDS" | tee "$DATA/zoos/$z.diagnosis.md"
  done
}

stage_accuracy() {
  log "accuracy: GMN (weights), hparams_gb"
  # shellcheck disable=SC2086
  python -m experiments.accuracy "${ZOOS[@]}" --split all --method gmn,hparams_gb \
    --seeds "$SEEDS" --workers "$WORKERS" $ACC_FLAGS --out "$OUT/accuracy/gmn" --results-json "$RESULTS/accuracy.json"
  log "accuracy: GMN + probe features (output read-out, class probabilities, probe accuracy), the probe-accuracy line"
  # shellcheck disable=SC2086
  python -m experiments.accuracy "${ZOOS[@]}" --split all --method gmn_probes,probe_acc --probes "$PROBES" \
    --seeds "$SEEDS" --workers "$WORKERS" $ACC_FLAGS $PROBE_HEAD_FLAGS --out "$OUT/accuracy/gmn_probes" \
    --results-json "$RESULTS/accuracy.json"
  log "accuracy: baselines (same budget)"
  # shellcheck disable=SC2086
  python -m experiments.accuracy "${ZOOS[@]}" --split all --method statnn,deepsets,dmc \
    --seeds "$SEEDS" --workers "$WORKERS" $ACC_FLAGS --out "$OUT/accuracy/baselines" --results-json "$RESULTS/accuracy.json"
}

stage_spread() {
  local zoo=(--zoo "diverse-archs-spread=$DATA/zoos/diverse-archs-spread")
  log "spread zoo"
  # shellcheck disable=SC2086
  python -m inner_tasks.zoo --preset diverse-archs-spread --out "$DATA/zoos/diverse-archs-spread" \
    --n "${ZOO_N_SPREAD:-3000}" --workers "$WORKERS" ${ZOO_FLAGS:-}
  python -m experiments.accuracy.diagnose --zoo "$DATA/zoos/diverse-archs-spread" --seeds "$SEEDS" \
    | tee "$DATA/zoos/diverse-archs-spread.diagnosis.md"
  log "spread: references (hparams_gb, 64-probe line)"
  python -m experiments.accuracy "${zoo[@]}" --split all --method hparams_gb --seeds "$SEEDS" \
    --out "$OUT/accuracy/spread_hparams_gb" --results-json "$RESULTS/accuracy.json"
  python -m experiments.accuracy "${zoo[@]}" --split all --method probe_acc --probes 64 --seeds "$SEEDS" \
    --out "$OUT/accuracy/spread_probe_acc64" --results-json "$RESULTS/accuracy.json" --results-name probe_acc=probe_acc64
  log "spread: GMN, 64 probes, residual on the line"
  # shellcheck disable=SC2086
  python -m experiments.accuracy "${zoo[@]}" --split all --method gmn_probes --probes 64 --seeds "$SEEDS" \
    --workers "$WORKERS" $ACC_FLAGS $PROBE_HEAD_FLAGS --residual-base --out "$OUT/accuracy/spread_gmn_probes64" \
    --results-json "$RESULTS/accuracy.json" --results-name gmn_probes=gmn_probes64
  log "spread: baselines and the weights-only GMN"
  # shellcheck disable=SC2086
  python -m experiments.accuracy "${zoo[@]}" --split all --method statnn,deepsets,dmc,gmn --seeds "$SEEDS" \
    --workers "$WORKERS" $ACC_FLAGS --out "$OUT/accuracy/spread_weights" --results-json "$RESULTS/accuracy.json"
}

stage_inr_sets() {
  log "INR sets"
  # shellcheck disable=SC2086
  python -m inner_tasks.inr --data digits --out "$DATA/inr/digits_shared" --shared-init ${INR_SET_FLAGS:-}
  # shellcheck disable=SC2086
  python -m inner_tasks.inr --data digits --out "$DATA/inr/digits" ${INR_SET_FLAGS:-}
  # shellcheck disable=SC2086
  python -m inner_tasks.inr --data digits --out "$DATA/inr/digits_x4" --inrs-per-image 4 ${INR_SET_FLAGS:-}
}

stage_inr_ablate() {
  log "INR lever ablation (GMN, 1 seed, 20 epochs, shared init)"
  local set="$DATA/inr/digits_shared" base=(--method gmn --seeds 1 --epochs 20)
  local aug=(--input-rotate 10 --input-scale 0.1 --input-shift 0.06)
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --out "$OUT/inr/ablate/plain"
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" "${aug[@]}" --out "$OUT/inr/ablate/input_aug"
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --hidden 16 --out "$OUT/inr/ablate/h16"
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --hidden 64 "${aug[@]}" --out "$OUT/inr/ablate/h64_input_aug"
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --layers 2 --out "$OUT/inr/ablate/l2"
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --dropout 0.3 --weight-decay 0.05 --out "$OUT/inr/ablate/regularised"
  for p in 64 256; do
    python -m experiments.inr_classify --inrs "$set" --method gmn,probe_pixels --seeds 1 --epochs 20 --probes $p \
      --out "$OUT/inr/ablate/probes$p"
  done
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --probes 64 "${aug[@]}" --out "$OUT/inr/ablate/probes64_aug"
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --probes 64 --dropout 0.2 --out "$OUT/inr/ablate/probes64_dropout"
  python -m experiments.inr_classify --inrs "$set" "${base[@]}" --probes 64 --dropout 0.2 "${aug[@]}" \
    --out "$OUT/inr/ablate/probes64_reg"
  for d in "$OUT"/inr/ablate/*/; do echo "$d"; cat "$d/classify.md"; done
}

stage_inr() {
  log "INR classification tables"
  # shared init: every method on weights (+ image references), then the GMN with probe features
  # shellcheck disable=SC2086
  python -m experiments.inr_classify --inrs "$DATA/inr/digits_shared" --method all --seeds "$SEEDS" --epochs "$INR_EPOCHS" \
    $GMN_FLAGS --out "$OUT/inr/classify_digits_shared" --results-json "$RESULTS/inr.json"
  # shellcheck disable=SC2086
  python -m experiments.inr_classify --inrs "$DATA/inr/digits_shared" --method gmn,probe_pixels --probes "$INR_PROBES" \
    --seeds "$SEEDS" --epochs "$INR_EPOCHS" $PROBE_FLAGS --out "$OUT/inr/classify_digits_shared_probes" \
    --results-json "$RESULTS/inr.json"
  # random init: the x4 set (4 INRs per training image, each from its own init; test = one INR per image)
  # shellcheck disable=SC2086
  python -m experiments.inr_classify --inrs "$DATA/inr/digits_x4" --method gmn,statnn,mlp,image_mlp --seeds "$SEEDS" \
    --epochs "$X4_EPOCHS" $GMN_FLAGS --out "$OUT/inr/classify_digits_x4" --results-json "$RESULTS/inr.json"
  # shellcheck disable=SC2086
  python -m experiments.inr_classify --inrs "$DATA/inr/digits_x4" --method gmn,probe_pixels --probes "$INR_PROBES" \
    --seeds "$SEEDS" --epochs "$X4_EPOCHS" $PROBE_FLAGS --out "$OUT/inr/classify_digits_x4_probes" \
    --results-json "$RESULTS/inr.json"
}

stage_cka() {
  log "CKA study"
  # shellcheck disable=SC2086
  python -m experiments.cka --inrs "$DATA/inr/digits_shared" --out "$OUT/inr/cka_digits_shared" --seeds 5 \
    --gmn-epochs "$INR_EPOCHS" $GMN_FLAGS
  log "CKA study, the GMN with probe features"
  # shellcheck disable=SC2086
  python -m experiments.cka --inrs "$DATA/inr/digits_shared" --out "$OUT/inr/cka_digits_shared_probes" --seeds 5 \
    --gmn-epochs "$INR_EPOCHS" --probes "$INR_PROBES" $PROBE_FLAGS
}

[ $# -gt 0 ] || { sed -n '2,23p' "$0"; exit 2; }
for stage in "$@"; do
  case "$stage" in
    all) stage_zoos; stage_accuracy; stage_inr_sets; stage_inr; stage_cka ;;
    zoos) stage_zoos ;;
    accuracy) stage_accuracy ;;
    inr-sets) stage_inr_sets ;;
    inr-ablate) stage_inr_ablate ;;
    inr) stage_inr ;;
    cka) stage_cka ;;
    spread) stage_spread ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
log "done: $*"
