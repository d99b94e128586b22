# The training arguments of the shipped default adapter (models/lora), sourced by
# scripts/train_default.sh and scripts/device_train.sh so that both run exactly this recipe.
# Data: SQuAD v1.1 train; the dev set scores the learning curve and the final adapter.
DEFAULT_RECIPE=(
  --epochs 3 --batch-size 64 --lr 1e-3 --lora-r 32 --lora-alpha 64 --lora-dropout 0
  --target-modules query,key,value,dense --max-seq-len 384 --doc-stride 128 --seed 42
  --eval-every 700
)
