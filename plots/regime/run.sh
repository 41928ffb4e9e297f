#!/usr/bin/env bash
# Every run of PLAN.md, then its tables: bash plots/regime/run.sh (about 5 hours on 2 cores).
# One job per (preset, budget, seed), two jobs at a time, one thread each. Each job runs its sweeps one after another
# (they share the scratch and baseline runs of their seed); a finished run is reused, so a stopped script, run again,
# goes on where it was. Runs go to out/regime/<preset><budget>/seed<S>/<run>, each job's output to out/regime/logs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
mkdir -p out/regime/logs

sweeps() {  # the arms of a preset, as sweeps whose first value is the baseline's: W1 W2 | W3 | D | E | L1 L2
  local enlarge
  enlarge=$([ "$1" = rich ] && echo "4.0/16,2.6/4" || echo "2.6/8,4.0/8")
  echo "prune_len=0.2,0.1,0.05 prune_start=0.5,0.3 decay_frac=1.0,0.2 enlarge/ffn_multiple=$enlarge" \
       "ema_beta/ema_warmup=0.5/30,0.9/66,0.99/690"
}

job() {  # preset steps name seed: every sweep of one seed; "third" runs B and S of rich at 253 on a third of the data
  local preset=$1 steps=$2 name=$3 seed=$4 sweep extra=()
  local specs
  specs=$(sweeps "$preset")
  if [ "$name" = rich253third ]; then specs="prune_len=0.2"; extra=(--data_dir out/regime/data_third); fi
  for sweep in $specs; do
    python plots/reproduce.py --preset "$preset" --max_steps "$steps" --out_dir "out/regime/$name" --seeds "$seed" \
        --sweep "$sweep" "${extra[@]}"
  done > "out/regime/logs/${name}_seed$seed.log" 2>&1
}
export -f job sweeps

# the repetition control's data: the first third of the training tokens (whole plays), the same validation plays
[ -f data/shakespeare/train.bin ] || python data/shakespeare/prepare.py
python - <<'EOF'
import os, shutil
import numpy as np
src, dst = "data/shakespeare", "out/regime/data_third"
os.makedirs(dst, exist_ok=True)
train = np.memmap(f"{src}/train.bin", dtype=np.uint16, mode="r")
train[: len(train) // 3].tofile(f"{dst}/train.bin")
for name in ("val.bin", "meta.json"):
    shutil.copy(f"{src}/{name}", dst)
EOF

jobs=()  # the longest first
for s in 1 2 3 4 5; do jobs+=("llama 6198 llama758 $s"); done
for s in 1 2 3 4 5; do jobs+=("rich 4200 rich758 $s"); done
for s in 1 2 3 4 5; do jobs+=("llama 2066 llama253 $s"); done
for s in 1 2 3 4 5; do jobs+=("rich 1400 rich253 $s"); done
for s in 1 2 3 4 5; do jobs+=("rich 1400 rich253third $s"); done
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c 'job "$@"' _

# the tables over seeds 1-5 (every run reused): out/regime/<name>/*_seeds_results.md and *_seeds.png
for spec in "llama 6198 llama758" "rich 4200 rich758" "llama 2066 llama253" "rich 1400 rich253"; do
  set -- $spec
  for sweep in $(sweeps "$1"); do
    python plots/reproduce.py --preset "$1" --max_steps "$2" --out_dir "out/regime/$3" --seeds 1,2,3,4,5 \
        --sweep "$sweep" > /dev/null
  done
done
python plots/reproduce.py --preset rich --max_steps 1400 --out_dir out/regime/rich253third --seeds 1,2,3,4,5 \
    --sweep prune_len=0.2 --data_dir out/regime/data_third > /dev/null
