#!/usr/bin/env bash
# The GPU check, ready for when a device is lent: one script, about 7 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh [MODEL] [--write-docs]   # MODEL: a trained model.pt (default: the demo's)
#
# Measures, each step under its own time limit:
#   1. CUDA AMP inference on the 512 x 512 x 300 benchmark volume against the MONAI spleen-bundle recipe on the
#      same GPU (bench_inference.py --device cuda: in-process and whole command, Dice vs truth);
#   2. --stitch-device cpu on a 512 x 512 x 1000 volume (windows on the GPU, the full-volume output in RAM);
#   3. training throughput, the project's `train` against the plain MONAI loop (bench_training.py --device cuda);
#   4. time to a fixed validation Dice, both paths (bench_training.py --time-to-dice);
#   5. a 2-process DDP training (torchrun; ranks share the GPU over gloo when there is one GPU).
# Logs go to $RES (default benchmarks/.cache/gpu, or $OUT on the lent machine); the numbers are collected into
# $RES/gpu_section.md, and appended to docs/performance.md with --write-docs.
set -uo pipefail
cd "$(dirname "$0")/.."
WRITE_DOCS=0
MODEL=demo_output/run/model.pt
for arg in "$@"; do
  if [[ "$arg" == "--write-docs" ]]; then WRITE_DOCS=1; else MODEL=$arg; fi
done
RES=${OUT:-benchmarks/.cache/gpu}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-12345}  # which of the steps below to run (e.g. STEPS=12 for the inference ones)
want() { [[ "$STEPS" == *"$1"* ]]; }
# QUICK=1: a rehearsal of the script's mechanics with small sizes (e.g. DEVICE=cpu on a machine without a GPU)
if [[ "${QUICK:-0}" == 1 ]]; then SLICES=80 BIG=100 CASES=4 EPOCHS=2 TTD_EPOCHS=4 TTD=0.01
else SLICES=300 BIG=1000 CASES=10 EPOCHS=6 TTD_EPOCHS=40 TTD=0.4; fi
mkdir -p "$RES" benchmarks/.cache
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

stamp "machine"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU ($DEVICE)") \
  | tee "$RES/gpu.txt"
$PY -c "import torch, monai, SimpleITK; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai',
monai.__version__, 'SimpleITK', SimpleITK.Version_VersionString(), 'cpus', __import__('os').cpu_count())" \
  | tee -a "$RES/gpu.txt"

# the volumes are CPU work: the big one is made in the background while the GPU works on the first
make_volume() { $PY -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from common import \
make_volume; make_volume(Path('benchmarks/.cache'), $1)"; }
stamp "making the $SLICES-slice volume; the $BIG-slice one in the background"
make_volume $SLICES
if want 2; then make_volume $BIG > "$RES/volumes.log" 2>&1 & fi
VOLS=$!

want 1 && stamp "1. inference vs recipe, CUDA" && timeout 150 $PY benchmarks/bench_inference.py --model "$MODEL" --device $DEVICE --volumes bench --slices $SLICES 2>&1 | tee "$RES/inference.txt"

want 2 && stamp "2. --stitch-device cpu, 512 x 512 x $BIG" && wait $VOLS && timeout 100 $PY benchmarks/bench_inference.py --model "$MODEL" --device $DEVICE --stitch-device cpu --slices $BIG \
  --project-only 2>&1 | tee "$RES/stitch.txt"

want 3 && stamp "3. training throughput" && timeout 100 $PY benchmarks/bench_training.py --device $DEVICE --cases $CASES --epochs $EPOCHS --workers 8 2>&1 \
  | grep -v "INFO" | tee "$RES/training.txt"

want 4 && stamp "4. time to validation Dice" && timeout 170 $PY benchmarks/bench_training.py --device $DEVICE --time-to-dice $TTD --cases $((CASES + 4)) \
  --max-epochs $TTD_EPOCHS --val-every 4 --max-minutes 1.5 --workers 8 2>&1 | grep -v "INFO" | tee "$RES/time_to_dice.txt"

if want 5; then
stamp "5. 2-process DDP"
rm -rf benchmarks/.cache/ddp
$PY -m monai_pipeline.cli synth --out benchmarks/.cache/ddp/data --cases 6 --matrix 128 > /dev/null 2>&1
cat > benchmarks/.cache/ddp/tiny.yaml <<'YEOF'
training: {epochs: 4, batch_size: 2, val_interval: 2}
patch: {size: [48, 48, 32], num_samples: 2}
YEOF
timeout 120 $PY -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2 -m monai_pipeline.cli train \
  --manifest benchmarks/.cache/ddp/data/manifest.json --out benchmarks/.cache/ddp/run \
  --config benchmarks/.cache/ddp/tiny.yaml --device $DEVICE --no-progress > "$RES/ddp.txt" 2>&1
echo "ddp exit status $?" | tee -a "$RES/ddp.txt"
for f in benchmarks/.cache/ddp/run/ranks/*.json; do cat "$f"; echo; done 2>/dev/null | tee -a "$RES/ddp.txt"
tail -3 benchmarks/.cache/ddp/run/log.csv 2>/dev/null | tee -a "$RES/ddp.txt"
fi

stamp "collecting"
{
  echo "### GPU check, $(date -u +%Y-%m-%d) ($(head -1 "$RES/gpu.txt"))"
  echo
  echo "\`bash benchmarks/gpu_check.sh\` ($(sed -n 2p "$RES/gpu.txt")); logs in the check's output folder."
  echo
  echo '```'
  grep -sh "^\[bench\]\|speedup vs\|peak GPU" "$RES/inference.txt"
  grep -sh "project only\|peak GPU" "$RES/stitch.txt"
  grep -sh "patches/s\|throughput vs" "$RES/training.txt"
  grep -sh "s trained\|time to validation\|train:\|recipe:" "$RES/time_to_dice.txt"
  grep -sh "exit status\|world_size" "$RES/ddp.txt"
  echo '```'
} > "$RES/gpu_section.md"
cat "$RES/gpu_section.md"
if [[ $WRITE_DOCS == 1 ]]; then
  { echo; cat "$RES/gpu_section.md"; } >> docs/performance.md
fi
stamp "done"
