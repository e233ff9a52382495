#!/usr/bin/env bash
# Speculative decoding by prompt lookup (`--draft-max`), against the same generation without
# it, on the synthetic 2B4T-shaped model: decode tok/s (medians of REPS, runs alternating),
# drafted and accepted tokens. Three cases:
#   repeat   greedy on a prompt that repeats a passage: the random-weight model's greedy output
#            repeats too, so nearly every draft is right (the upper bound)
#   sample   temperature 1.0 on an ordinary prompt: few lookups match (the common case)
#   penalty  greedy with frequency and presence penalties on the repeating prompt: the output
#            avoids repeating itself, so few lookups match and some drafts are rejected
# (A random-weight model is so peaked that even sampled text repeats: rejected drafts are rare
# here. Their cost is bounded by the pause and the halving after a rejection; see DRAFT_* in
# engine/src/generate/mod.rs for the step-time ratios it rests on.)
#
#   bench/speculative.sh [MODEL]   # REPS=5 TOKENS=128 THREADS= (engine default)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-${BITNET_BENCH_CACHE:-$HOME/.cache/bitnet-bench}/models/2b4t-i2_s.gguf}
REPS=${REPS:-5}
TOKENS=${TOKENS:-128}
cargo build --release -q -p bitnet-cli
BITNET=$PWD/target/release/bitnet
[[ -f $MODEL ]] || "$BITNET" fixture --preset 2b4t --type i2_s --seed 1 -o "$MODEL"

passage="128000,791,6864,315,9822,374,12366,13,578,3363,315,279,1917,374,8421,11,323,433,374,1101,3967"
repeated="$passage$(printf ',791,6864,315,9822,374,12366,13,578,3363,315,279,1917,374,8421,11,323,433,374,1101,3967%.0s' 1 2 3)"
declare -A IDS=([repeat]=$repeated [sample]=$passage [penalty]=$repeated)
declare -A ARGS=([repeat]="--temperature 0" [sample]="--temperature 1.0 --seed 1" [penalty]="--temperature 0 --frequency-penalty 1.0 --presence-penalty 1.0")

out=$(mktemp)
for rep in $(seq "$REPS"); do
    for case in repeat sample penalty; do
        for d in 0 8; do
            # shellcheck disable=SC2086
            "$BITNET" generate --model "$MODEL" --ids "${IDS[$case]}" --max-tokens "$TOKENS" --ignore-eos \
                ${ARGS[$case]} --draft-max "$d" --json |
                python3 -c "import json,sys; r=json.load(sys.stdin); r.update(case='$case', draft=$d, rep=$rep); r.pop('text'); r.pop('token_ids'); r.pop('prompt_ids'); print(json.dumps(r))" >>"$out"
        done
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'case':<8} {'draft':>5} {'decode tok/s':>13} {'drafted':>8} {'accepted':>9} {'speed-up':>9}")
for case in ("repeat", "sample", "penalty"):
    base = statistics.median(r["decode_tok_s"] for r in rows if r["case"] == case and r["draft"] == 0)
    for d in (0, 8):
        mine = [r for r in rows if r["case"] == case and r["draft"] == d]
        tps = statistics.median(r["decode_tok_s"] for r in mine)
        drafted = statistics.median(r["draft_tokens"] for r in mine)
        acc = statistics.median(r["draft_accepted"] for r in mine)
        print(f"{case:<8} {d:>5} {tps:>13.2f} {drafted:>8.0f} {acc:>9.0f} {tps / base:>8.2f}x")
PY
