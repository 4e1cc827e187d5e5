#!/bin/bash
# Device call 2 (carrying .gpub, on the same machine, within its 30 s of warmth after call 1): the rest of
# ONNX Runtime GPU, then bench/embedding.py on the GPU in float32 with py-spy dumps of the server, then a
# float16 check. Results come back in $OUT.
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.LZMAFile(sys.stdin.buffer), sys.stdout.buffer, 1 << 20)"; }
[ -f /root/pay/ort.part.0 ] && [ -d /tmp/site ] || { el "call 1's files are gone (a fresh machine)"; exit 3; }
cat /root/pay/ort.part.0 .gpub/ort.part.1 | unxz | tar x -C /tmp || { el "unpack failed"; exit 1; }
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
# ONNX Runtime's CUDA provider needs CUDA 13's and cuDNN 9's libraries: PyTorch's pip packages have them.
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
export LD_LIBRARY_PATH="$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}"
python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
el "float32"
timeout "${BENCH_S:-200}" python3 bench/embedding.py --skip-fiftyone --n 3000 --data /tmp/photos \
  --batch-sizes 1,8,32,64 --model-min-s 2 --ingest-rounds 1 --skip-store-comparison --server-log "$OUT/server.log" > "$OUT/embedding-gpu.json" 2> "$OUT/bench.log" &
BENCH=$!
for i in $(seq 1 40); do  # where the server's threads are, every 4 s
  sleep 4; kill -0 $BENCH 2>/dev/null || break
  PID=$(pgrep -f "lookalike serve" | head -1); [ -n "$PID" ] || continue
  { echo "=== $(date +%H:%M:%S) dump $i"; timeout 5 py-spy dump --pid "$PID" 2>&1 | head -150; } >> "$OUT/spy.txt"
done
wait $BENCH; el "float32 rc $?"; tail -12 "$OUT/bench.log"
el "done"
