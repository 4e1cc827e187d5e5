#!/bin/bash
# Device call 1 (run in the repo root there, carrying .gpua): keep the first part of ONNX Runtime for call 2,
# unpack the other packages, build and install lookalike, and make the benchmark's photos.
set -u
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
unxz() { python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.LZMAFile(sys.stdin.buffer), sys.stdout.buffer, 1 << 20)"; }
mkdir -p /root/pay && cp .gpua/ort.part.0 /root/pay/
unxz < .gpua/small.tar.xz | tar x -C /tmp || { el "unpack failed"; exit 1; }
export PYTHONPATH=/tmp/site
nvidia-smi -L; python3 -V
el "building"
python3 -m pip install --no-deps --no-build-isolation --no-index . > "$OUT/build.log" 2>&1; el "build rc $?"
tail -3 "$OUT/build.log"
python3 -c "import lookalike_server._native, lookalike.v1.lookalike_pb2, pymilvus, milvus_lite; print('imports ok')"
python3 -c "
import sys; sys.path.insert(0, 'bench')
from pathlib import Path
from common import make_photos
print(len(make_photos(Path('/tmp/photos'), 3000)), 'photos')"
el "done"
