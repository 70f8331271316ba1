#!/usr/bin/env bash
# Soak: a source and N peers on loopback for a while; samples every peer's resident memory and
# reports its drift (last sample minus the sample after warm-up) and the peers' continuity.
# A benchmark, not part of CI.
#
#   bench/soak.sh [PEERS] [SECONDS] [OUT_DIR]      # defaults: 16 peers, 3600 s
#
# Writes OUT_DIR/rss.tsv (time, then one KiB column per peer), OUT_DIR/summary.json and the
# processes' logs in OUT_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${1:-16}
SECS=${2:-3600}
OUT=${3:-bench/results/soak-$(date -u +%Y%m%dT%H%M%S)}
WARMUP=${WARMUP:-150}   # the store fills its window over the first two minutes
EVERY=${EVERY:-30}
cargo build --release -q
BIN=$(pwd)/target/release/coolstream
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/coolstream-soak.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  # The logs say where each late segment was (kept beside the figures).
  mkdir -p "$OUT/logs" && cp "$WORK"/*.log "$OUT/logs/" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ID=$("$BIN" keygen --out "$WORK/ch.key")
SP=$(port)
"$BIN" source --key "$WORK/ch.key" --name soak --input "file:assets/demo.ts?loop" \
  --listen "127.0.0.1:$SP" >"$WORK/source.log" 2>&1 & PIDS+=($!)
sleep 6
PEER_PIDS=()
for i in $(seq 1 "$PEERS"); do
  "$BIN" peer --channel "$ID" --bootstrap "127.0.0.1:$SP" --listen "127.0.0.1:$(port)" \
    --stats-json "$OUT/peer$i.json" >"$WORK/peer$i.log" 2>&1 & PIDS+=($!); PEER_PIDS+=($!)
  sleep 0.3
done
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
START=$(date +%s)
while :; do
  NOW=$(( $(date +%s) - START ))
  row="$NOW"
  for p in "${PEER_PIDS[@]}"; do row="$row	$(rss "$p")"; done
  echo "$row" >>"$OUT/rss.tsv"
  [ "$NOW" -ge "$SECS" ] && break
  sleep "$EVERY"
done
python3 - "$OUT" "$WARMUP" "$PEERS" "$SECS" <<'PY'
import json, sys, glob
out, warm, peers, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [list(map(int, l.split())) for l in open(f"{out}/rss.tsv")]
base = next(r for r in rows if r[0] >= warm)
last = rows[-1]
drift = [last[i] - base[i] for i in range(1, len(last))]
cont = []
for f in sorted(glob.glob(f"{out}/peer*.json")):
    d = json.load(open(f)); cont.append(d["continuity"])
s = {"peers": peers, "seconds": last[0], "warmup_s": base[0],
     "rss_kib_after_warmup": base[1:], "rss_kib_end": last[1:],
     "drift_kib": drift, "drift_kib_max": max(drift), "drift_kib_mean": sum(drift) / len(drift),
     "continuity_min": min(cont), "continuity_mean": sum(cont) / len(cont)}
json.dump(s, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps({k: s[k] for k in ["peers", "seconds", "drift_kib_max", "drift_kib_mean", "continuity_min"]}))
PY
