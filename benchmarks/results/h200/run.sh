#!/usr/bin/env bash
# Issue 12 Part B on the lent GPU host: unpack DALI, install, then every check in priority order,
# each bounded, every log in $OUT. Usage (repo root): bash .gpu-py/run.sh STEP...
# steps: unpack suite inet demo checks
# As run on 2026-11-26 (NVIDIA H200): `bash .gpu-py/run.sh unpack suite inet demo checks` with
# .dali/2 and .gpu-py (this script, pytest's wheels as pylibs.tar.xz, first_run_checks.py) carried.
# That first call's `pip install -e .` went to another Python than `python` (the host's `pip` is
# not its venv's), so nothing imported; the rerun (`... suite inet demo checks`) put the tree on
# PYTHONPATH with alexnet_dali/pipelines linked to ../pipelines. `python -m pip` below is the fix.
set -uo pipefail
REPO=$PWD
export PYTHONPATH=/tmp/site:/tmp/pylibs
export PYTHONUNBUFFERED=1
W=/tmp/work; mkdir -p "$W"
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/steps.log"; }

unpack() {
  mkdir -p /tmp/pylibs && tar -C /tmp/pylibs -xJf .gpu-py/pylibs.tar.xz
  if [ ! -d /tmp/site/nvidia/dali ]; then
    cp .dali/2/* /tmp/dali/ 2>/dev/null
    (cd /tmp/dali && cat part-* > site.tar.xz && sha256sum -c SHA256SUMS && mkdir -p /tmp/site &&
     xz -T0 -dc site.tar.xz | tar -x -C /tmp/site) || { log "unpack FAILED"; return 1; }
  fi
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  python -m pip install --no-deps --no-index --no-build-isolation -e . > "$OUT/pip.log" 2>&1 || {
    log "pip install -e . failed (see pip.log): using the tree on PYTHONPATH"
    ln -sfn ../pipelines alexnet_dali/pipelines; export PYTHONPATH=$PYTHONPATH:$REPO; }
  python - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import torch, nvidia.dali as d, alexnet_dali, pytest
print("torch", torch.__version__, "cuda", torch.version.cuda, "dali", d.__version__, "pytest", pytest.__version__,
      "gpu", torch.cuda.get_device_name(0), "alexnet_dali", alexnet_dali.__file__)
EOF
}

suite() {  # the GPU tests, then every benchmark at the GPU's sizes, with the decoder sweep
  timeout ${1:-330} python benchmarks/suite.py --device gpu --out "$OUT/suite" --hw-decoder-load 0,0.65,1 \
    --threads 4,8,16 > "$OUT/suite.out" 2>&1
  log "suite exit $?"
}

inet() {  # 1000 classes x (50 train + 5 val) files of the benchmark's 500x375 JPEGs: one epoch,
          # uninterrupted, then a torchrun run stopped by SIGTERM mid-epoch and resumed
  python - <<'EOF' > "$OUT/inet-make.log" 2>&1
import os, sys
sys.path.insert(0, "benchmarks")
from common import imagenet_like
files = imagenet_like(4096)
root = "/tmp/inet"
for split, per in (("train", 50), ("val", 5)):
    for c in range(1000):
        d = f"{root}/{split}/n{c:05d}"; os.makedirs(d, exist_ok=True)
        for i in range(per):
            k = (c * per + i + (0 if split == "train" else 50000)) % len(files)
            dst = f"{d}/{c:05d}_{i:02d}.jpg"
            if not os.path.exists(dst):
                os.link(files[k], dst)
print("made", root)
EOF
  log "inet data: $(tail -1 $OUT/inet-make.log)"
  for precision in bf16 fp32; do
    rm -rf "$W/epoch-$precision"
    timeout 150 python -m alexnet_dali train /tmp/inet --out "$W/epoch-$precision" --epochs 1 \
      --batch-size 256 --precision $precision > "$OUT/inet-epoch-$precision.log" 2>&1
    log "inet epoch $precision exit $?"
    cp "$W/epoch-$precision/history.json" "$OUT/inet-epoch-$precision-history.json" 2>/dev/null
  done
  rm -rf "$W/tr"
  timeout 120 torchrun --nproc_per_node=1 -m alexnet_dali train /tmp/inet --out "$W/tr" --epochs 2 \
    --batch-size 256 --precision bf16 > "$OUT/torchrun-1.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do  # SIGTERM once epoch 2 has 20 steps done
    tr '\r' '\n' < "$OUT/torchrun-1.log" | grep -a "epoch 2/2" | grep -aqE "\| *[2-9][0-9]/" && break
    kill -0 $pid 2>/dev/null || break; sleep 0.2
  done
  kill -TERM $pid; wait $pid; log "torchrun SIGTERM exit $?"
  timeout 120 torchrun --nproc_per_node=1 -m alexnet_dali train /tmp/inet --out "$W/tr" --epochs 2 --resume \
    > "$OUT/torchrun-2.log" 2>&1
  log "torchrun resume exit $?"
  cp "$W/tr/history.json" "$OUT/torchrun-history.json" 2>/dev/null
}

demo() {
  rm -rf "$W/demo"
  timeout ${1:-150} python -m alexnet_dali demo --out "$W/demo" --device gpu > "$OUT/demo.log" 2>&1
  log "demo exit $?"
}

checks() {
  timeout 90 python .gpu-py/first_run_checks.py "$HOME/.cache/alexnet-dali/benchmarks/imagenet-like-v2-4096-0" \
    > "$OUT/first_run_checks.log" 2>&1
  log "first_run_checks exit $?"
}

for step in "$@"; do log "start $step"; $step; done
log "done"
