#!/usr/bin/env bash
# Decode speed and peak memory of the 2B4T model inside a CPU quota and a memory limit, as the
# Azure Container Apps consumption sizes give them (docs/deploy.md, "Azure Container Apps").
#
#   sudo bash bench/container-sizes.sh [MODEL.gguf] [BITNET_BIN]
#
# Each size runs in its own cgroup (v1 cpu + memory controllers, or v2): CFS quota = vCPU x
# period, memory limit = the size's memory. The model is first copied inside the cgroup, as a
# replica that downloads it writes it, so its page cache is charged there and competes with
# everything else for the limit. Then `bitnet bench` at 1 thread (the quota decides how much of
# that thread runs). Needs root. Defaults: a synthetic 2b4t i2_s model, target/release/bitnet.
# TIMEOUT (300 s) bounds each size: a size whose memory cannot hold the model re-reads it from
# disk on every token, and is reported as over the timeout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${2:-${BITNET_BIN:-$ROOT/target/release/bitnet}}"
MODEL="${1:-}"
WORK="$(mktemp -d /var/tmp/bitnet-sizes.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
if [[ -z "$MODEL" ]]; then
  MODEL="$WORK/2b4t.gguf"
  "$BIN" fixture --preset 2b4t -o "$MODEL" >/dev/null
fi
SIZES=${SIZES:-"0.25:512 0.5:1024 0.75:1536 1.0:2048 2.0:4096"}   # vCPU:MiB
TG=${TG:-32}

if [[ -d /sys/fs/cgroup/memory && -d /sys/fs/cgroup/cpu ]]; then V=1; else V=2; fi
printf '%-6s %-8s %10s %10s %12s %s\n' vCPU memory "tg tok/s" "pp tok/s" "peak RSS MB" note
for size in $SIZES; do
  cpu="${size%%:*}" mib="${size##*:}"
  name="bitnet-size-$$-$mib"
  if [[ $V == 1 ]]; then
    mkdir -p "/sys/fs/cgroup/cpu/$name" "/sys/fs/cgroup/memory/$name"
    echo 100000 > "/sys/fs/cgroup/cpu/$name/cpu.cfs_period_us"
    awk -v c="$cpu" 'BEGIN { printf "%d\n", c * 100000 }' > "/sys/fs/cgroup/cpu/$name/cpu.cfs_quota_us"
    echo $((mib << 20)) > "/sys/fs/cgroup/memory/$name/memory.limit_in_bytes"
    enter="echo \$\$ > /sys/fs/cgroup/cpu/$name/tasks; echo \$\$ > /sys/fs/cgroup/memory/$name/tasks"
  else
    mkdir -p "/sys/fs/cgroup/$name"
    awk -v c="$cpu" 'BEGIN { printf "%d 100000\n", c * 100000 }' > "/sys/fs/cgroup/$name/cpu.max"
    echo $((mib << 20)) > "/sys/fs/cgroup/$name/memory.max"
    enter="echo \$\$ > /sys/fs/cgroup/$name/cgroup.procs"
  fi
  out="$WORK/$name.txt"
  set +e
  timeout "${TIMEOUT:-300}" bash -c "$enter; cp '$MODEL' '$WORK/copy.gguf' && exec '$BIN' bench --model '$WORK/copy.gguf' --threads 1 --pp 32 --tg $TG --reps 3" > "$out" 2>&1
  rc=$?
  set -e
  rm -f "$WORK/copy.gguf"
  tg=$(awk '/^tg/ {print $2}' "$out"); pp=$(awk '/^pp/ {print $2}' "$out"); rss=$(awk '/^peak RSS/ {print $3}' "$out")
  note=""; [[ $rc -eq 0 ]] || note="exit $rc$([[ $rc -eq 137 ]] && echo ' (killed: out of memory)')$([[ $rc -eq 124 ]] && echo " (over ${TIMEOUT:-300} s)")"
  printf '%-6s %-8s %10s %10s %12s %s\n' "$cpu" "${mib}Mi" "${tg:--}" "${pp:--}" "${rss:--}" "$note"
  if [[ $V == 1 ]]; then rmdir "/sys/fs/cgroup/cpu/$name" "/sys/fs/cgroup/memory/$name"; else rmdir "/sys/fs/cgroup/$name"; fi
done
