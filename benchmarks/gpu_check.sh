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
# QUICK=1: a rehearsal of the script's mechanics with small sizes (e.g. DEVICE=cpu on a machine without a GPU)
if [[ "${QUICK:-0}" == 1 ]]; then SLICES=80 BIG=100 CASES=4 EPOCHS=2 TTD_EPOCHS=4 TTD=0.01
else SLICES=300 BIG=1000 CASES=10 EPOCHS=6 TTD_EPOCHS=60 TTD=0.5; fi
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

# the volumes are CPU work: make them side by side, in the background, while the GPU works
stamp "making volumes in the background"
$PY - $SLICES $BIG <<'PYEOF' > "$RES/volumes.log" 2>&1 &
import sys; sys.path.insert(0, "benchmarks")
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor
from common import make_volume
with ProcessPoolExecutor(2) as ex:
    list(ex.map(make_volume, [Path("benchmarks/.cache")] * 2, [int(a) for a in sys.argv[1:3]]))
print("volumes ready")
PYEOF
VOLS=$!

stamp "1. inference vs recipe, CUDA"
wait $VOLS
timeout 150 $PY benchmarks/bench_inference.py --model "$MODEL" --device $DEVICE --volumes bench --slices $SLICES 2>&1 | tee "$RES/inference.txt"

stamp "2. --stitch-device cpu, 512 x 512 x $BIG"
timeout 100 $PY benchmarks/bench_inference.py --model "$MODEL" --device $DEVICE --stitch-device cpu --slices $BIG \
  --project-only 2>&1 | tee "$RES/stitch.txt"

stamp "3. training throughput"
timeout 100 $PY benchmarks/bench_training.py --device $DEVICE --cases $CASES --epochs $EPOCHS --workers 8 2>&1 \
  | grep -v "INFO" | tee "$RES/training.txt"

stamp "4. time to validation Dice"
timeout 170 $PY benchmarks/bench_training.py --device $DEVICE --time-to-dice $TTD --cases $((CASES + 4)) \
  --max-epochs $TTD_EPOCHS \
  --val-every 4 --max-minutes 1.2 --workers 8 2>&1 | grep -v "INFO" | tee "$RES/time_to_dice.txt"

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
cat benchmarks/.cache/ddp/run/ranks/*.json 2>/dev/null | tee -a "$RES/ddp.txt"; echo
tail -3 benchmarks/.cache/ddp/run/log.csv 2>/dev/null | tee -a "$RES/ddp.txt"

stamp "collecting"
{
  echo "### GPU check, $(date -u +%Y-%m-%d) ($(head -1 "$RES/gpu.txt"))"
  echo
  echo "\`bash benchmarks/gpu_check.sh\` ($(sed -n 2p "$RES/gpu.txt")); logs in the check's output folder."
  echo
  echo '```'
  grep -h "^\[bench\]\|speedup vs\|peak GPU" "$RES/inference.txt"
  grep -h "project only" "$RES/stitch.txt"
  grep -h "patches/s\|throughput vs" "$RES/training.txt"
  grep -h "s trained\|time to validation\|train:\|recipe:" "$RES/time_to_dice.txt"
  grep -h "exit status\|world_size" "$RES/ddp.txt"
  tail -2 "$RES/ddp.txt"
  echo '```'
} > "$RES/gpu_section.md"
cat "$RES/gpu_section.md"
if [[ $WRITE_DOCS == 1 ]]; then
  { echo; cat "$RES/gpu_section.md"; } >> docs/performance.md
fi
stamp "done"
