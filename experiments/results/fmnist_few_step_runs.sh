#!/usr/bin/env bash
# The runs behind the few-step table of experiments/results/README.md ("Few-step generation"), in three stages
# that each fit one session on this 2-core CPU (a stage's teacher does not outlive the machine it was trained on).
# Every command resumes: training from its checkpoints, scoring from the rows already in its jsonl file, so an
# interrupted stage continues where it stopped when run again.
#
#   bash experiments/results/fmnist_few_step_runs.sh ct   # consistency training from scratch: ~70 min
#   bash experiments/results/fmnist_few_step_runs.sh pd   # rectified-flow teacher (54 min), its rows (~25 min),
#                                                         # progressive distillation (PD_START -> 1 in rounds of
#                                                         # PD_ROUND_STEPS steps)
#   bash experiments/results/fmnist_few_step_runs.sh cd   # EDM teacher (~55 min), consistency distillation
#                                                         # (CD_STEPS steps), the teacher's rows (~17 min)
#
# RUNS (default /work/runs) holds the workdirs; GRID (default experiments/results) receives the sample grids.
# Timings: s/step of this machine alone (teachers 2.0-2.3, CT 2.5-2.7, PD 3.4, CD 3.6); every stage first trains the
# feature classifier of the Frechet distance (~5 min; deterministic: 91.07% test accuracy on every retrain so far).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-/work/runs}
GRID=${GRID:-experiments/results}
PD_START=${PD_START:-32}
PD_ROUND_STEPS=${PD_ROUND_STEPS:-200}
CD_STEPS=${CD_STEPS:-400}
CLS=$RUNS/fmnist_classifier

train() { python -m diffjax.main --noprogress "$@"; }

classifier() {
  [ -f "$CLS/classifier_params.npz" ] ||
    train --config configs/fashion_mnist_classifier.py --workdir "$CLS" --mode train
}

rows() {  # $1 config, $2 workdir, $3 samplers, $4 evaluation counts: a teacher's Frechet distances
  python experiments/bench/fmnist_nfe.py --config "$1" --workdir "$2" --classifier "$CLS" --nfe "$4" --samplers "$3"
}

teacher() {  # $1 config, $2 workdir, $3 samplers: train, then its rows at 1, 2, 4, 8 and ~50 evaluations
  train --config "$1" --workdir "$2"
  rows "$1" "$2" "$3" 1,2,4,8,50
}

student() {  # $1 config, $2 workdir, then FIELD=VALUE overrides: train, then score at 1, 2, 4 and 8 evaluations
  local config=$1 workdir=$2 flags=() overrides=()
  shift 2
  for kv in "$@"; do flags+=("--config.$kv"); overrides+=(--override "$kv"); done
  train --config "$config" --workdir "$workdir" "${flags[@]}"
  python experiments/results/fmnist_few_step.py --config "$config" --workdir "$workdir" --classifier "$CLS" \
    --nfe 1,2,4,8 --grid "$GRID" "${overrides[@]}"
}

case "${1:-}" in
  ct)
    classifier
    student configs/fashion_mnist_consistency.py "$RUNS/ct"
    ;;
  pd)
    classifier
    teacher configs/fashion_mnist_budget_rf.py "$RUNS/budget/rectified_flow" ode_euler,ode_heun,dpm_solver_2m
    student configs/fashion_mnist_progressive.py "$RUNS/pd_rf" distill.teacher_workdir="$RUNS/budget/rectified_flow" \
      distill.start_steps="$PD_START" distill.steps_per_round="$PD_ROUND_STEPS" \
      training.checkpoint_freq="$PD_ROUND_STEPS"
    ;;
  cd)
    classifier
    train --config configs/fashion_mnist_budget_edm.py --workdir "$RUNS/budget/edm"
    student configs/fashion_mnist_consistency_distillation.py "$RUNS/cd_edm" \
      distill.teacher_workdir="$RUNS/budget/edm" training.n_iters="$CD_STEPS"
    # the teacher's rows; at 50 evaluations only its best sampler (Heun on the Karras grid, ablation table)
    rows configs/fashion_mnist_budget_edm.py "$RUNS/budget/edm" edm_heun,dpm_solver_2m,ode_euler 1,2,4,8
    rows configs/fashion_mnist_budget_edm.py "$RUNS/budget/edm" edm_heun 50
    ;;
  *)
    echo "usage: $0 ct|pd|cd (got '${1:-}')" >&2
    exit 2
    ;;
esac
