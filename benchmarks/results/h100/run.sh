# What ran on the lent NVIDIA H100 80GB HBM3 on 2026-11-26 (15 minutes of device time in all), call by call,
# from the repository root at commit 1384b7b (plus benchmarks/gpu_run.sh's SUITE_SECONDS and INET):
#   1, 2 (carry .dali/0, .dali/1):  mkdir -p /tmp/dali && cp .dali/N/* /tmp/dali/
#   3 (carry .dali/2 .gpu-py, 460 s):
export SUITE_SECONDS=375 INET="bf16 --compile"; bash benchmarks/gpu_run.sh unpack suite inet
#     the suite ran tests/test_gpu.py and benchmarks/pipeline.py, and stopped itself (exit 124) in predict.py
#   4 (108 s): predict.py and train.py again, 2 trials a row, on the warm machine
export PYTHONPATH=/tmp/site:/tmp/pylibs PYTHONUNBUFFERED=1; W=/tmp/work/suite2; mkdir -p $W/profiles
timeout 170 python benchmarks/predict.py --device gpu --trials 2 --json $W/predict.json --profile $W/profiles > $W/predict.log 2>&1
timeout 150 python benchmarks/train.py --device gpu --trials 2 --json $W/train.json --profile $W/profiles > $W/train.log 2>&1
#   5 (48 s): the trainer's bf16 and fp32 epochs on the 50k-file set that call 3 made
for v in bf16 fp32; do timeout 115 python -m alexnet_dali train /tmp/inet --out /tmp/work/epoch-$v --epochs 1 \
  --batch-size 256 --precision $v > $OUT/inet-epoch-$v.log 2>&1; done
#   6 (42 s): the demo
timeout 150 python -m alexnet_dali demo --out /tmp/work/demo --device gpu > $OUT/demo.log 2>&1
#   7, 8: torchrun (NCCL), SIGTERM to torchrun's agent after 22 s, then --resume (the first try, call 7, killed its own shell)
R="python -m torch.distributed.run --standalone --nproc_per_node=1 -m alexnet_dali train /tmp/inet --out /tmp/work/tr --epochs 2 --batch-size 256 --precision bf16"
$R > $OUT/torchrun-1.log 2>&1 & P=$!; sleep 22; kill -TERM $P; wait $P
timeout 75 $R --resume > $OUT/torchrun-2.log 2>&1
