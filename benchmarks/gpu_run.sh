#!/usr/bin/env bash
# A GPU session's run, on a lent GPU host after the two staging calls (.dali/0, .dali/1 copied to
# /tmp/dali): a third call carrying .dali/2 and .gpu-py (pytest's wheels as pylibs.tar.xz) runs,
# from the repo root,
#     bash benchmarks/gpu_run.sh unpack suite    (timeout_s 600; the suite stops itself at 7 minutes)
# and a fourth, at once on the warm machine, carrying nothing,
#     bash benchmarks/gpu_run.sh inet            (timeout_s 600; four epochs of at most 140 s each)
# (the two in one call could pass the 10 minutes a command may take). SUITE_SECONDS (default 420)
# caps the suite; INET (default "bf16 --compile,bf16 --compile --prefetch 4,bf16,fp32") lists the
# epochs (--prefetch 4: whether a deeper queue feeds the compiled model, which waited for its
# batches 19% of the time on the H100). With 15 minutes of device time in all, the H100's run
# (results/h100/run.sh) used SUITE_SECONDS=375 INET="bf16 --compile" and ran the rest in later calls;
# results/h200/run.sh is what ran on the H200. Every log goes to $OUT. The steps, most wanted first:
#   suite  the GPU tests, then every benchmark with a profile (table and timeline) of each row, the
#          reference like for like at 1.0 and 0.65, ten-crop's halves and host-wait row, and at the
#          first setting (the trainer's 1.0, 8 threads) the decoder without fancy upsampling
#   inet   one epoch of `alexnet-dali train` on a 50,000-file 1000-class set at the defaults
#          (hw_decoder_load 1.0) for each of INET's variants
#   prepared  issue 25: `prepare` of the inet set on the GPU (its time and bytes), one epoch of each
#          INET variant on the prepared set, and benchmarks/prepare.py's GPU rows (original against
#          prepared). Run it in its own call after inet: bash benchmarks/gpu_run.sh prepared
#   demo   `alexnet-dali demo --device gpu` at the current defaults
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

suite() {  # the GPU tests, then every benchmark at the GPU's sizes, each row profiled
  timeout ${SUITE_SECONDS:-420} python benchmarks/suite.py --device gpu --out "$W/suite" --hw-decoder-load 1,0.65 \
    --threads 8,16 --profile > "$OUT/suite.out" 2>&1
  log "suite exit $?"
  tar -C "$W" -czf "$OUT/suite.tar.gz" suite  # one file: many small ones would be left out of $OUT
}

IFS=, read -r -a INET_VARIANTS <<< "${INET:-bf16 --compile,bf16 --compile --prefetch 4,bf16,fp32}"
inet() {  # 1000 classes x (50 train + 5 val) files of the benchmark's 500x375 JPEGs: one epoch each
  inet_data
  epochs /tmp/inet epoch
}

prepared() {  # the same 50k set prepared on the GPU (256 squares, q90), then the epochs and pipeline rows on it
  [ -d /tmp/inet ] || inet_data
  rm -rf /tmp/inet-256
  local t0=$SECONDS
  timeout 300 python -m alexnet_dali prepare /tmp/inet /tmp/inet-256 --device gpu > "$OUT/prepare.log" 2>&1
  log "prepare exit $? in $((SECONDS - t0)) s ($(tail -2 $OUT/prepare.log | head -1))"
  du -sb /tmp/inet/train /tmp/inet-256/train >> "$OUT/prepare.log" 2>&1
  epochs /tmp/inet-256 prepared-epoch
  timeout 300 python benchmarks/prepare.py --device gpu --images 4096 --start-files 4096 --no-s3 \
    --json "$OUT/prepare-bench.json" > "$OUT/prepare-bench.out" 2>&1
  log "prepare benchmark exit $?"
}

inet_data() {
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
}

epochs() {  # epochs DATA TAG: one epoch of `train` on DATA for each of INET's variants
  for variant in "${INET_VARIANTS[@]}"; do
    name=$(sed -E 's/ +-*/-/g' <<< "$variant"); rm -rf "$W/$2-$name"  # "bf16 --prefetch 4": bf16-prefetch-4
    timeout 140 python -m alexnet_dali train "$1" --out "$W/$2-$name" --epochs 1 \
      --batch-size 256 --precision $variant > "$OUT/inet-$2-$name.log" 2>&1
    log "inet $2 $variant exit $?"
    cp "$W/$2-$name/history.json" "$OUT/inet-$2-$name-history.json" 2>/dev/null
  done
}

demo() {
  rm -rf "$W/demo"
  timeout ${1:-150} python -m alexnet_dali demo --out "$W/demo" --device gpu > "$OUT/demo.log" 2>&1
  log "demo exit $?"
}

for step in "$@"; do log "start $step"; $step; done
log "done"
