# The training arguments behind the shipped default adapter (models/lora), sourced by
# scripts/train_default.sh, scripts/device_train.sh and scripts/device_accurate.sh.
# Data: SQuAD v1.1 train; the dev set scores the learning curve and the final adapter.
# DEFAULT_RECIPE: the LoRA recipe (fresh LoRA r=32, 3 epochs at lr 1e-3). Until 2026-11-28 it was the
# whole default; now it is stage 1, distilled from bert-qa-accurate (qabridge distill, T=2, alpha 0.5).
DEFAULT_RECIPE=(
  --epochs 3 --batch-size 64 --lr 1e-3 --lora-r 32 --lora-alpha 64 --lora-dropout 0
  --target-modules query,key,value,dense --max-seq-len 384 --doc-stride 128 --seed 42
  --eval-every 700
)
# Stage 2: a warm start from stage 1 (its LoRA shape) on 20,000 questions plus a third as many topical
# negatives (each question over another paragraph of its article), still distilled; the negatives'
# windows learn their gold [CLS] label alone (--negatives-target gold, distill's default).
DEFAULT_WARM_NEGATIVES=(
  --subset-size 20000 --epochs 1 --batch-size 32 --lr 3e-4 --seed 42
  --negatives topical --negative-ratio 0.33
)
