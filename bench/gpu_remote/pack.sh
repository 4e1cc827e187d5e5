#!/bin/bash
# Packs what a borrowed GPU machine lacks for bench/embedding.py into .gpua/ and .gpub/ at the repo root
# (git-ignored): Python 3.12 wheels of ONNX Runtime GPU (only sm_$ARCH machine code kept), Milvus Lite and
# its needs, grpc, protobuf, onnx and py-spy, unpacked and xz-compressed (that machine has no zstd; Python's
# lzma unpacks xz), split so that each folder plus the working tree fits one call's 64 MiB.
# Run from anywhere: bash bench/gpu_remote/pack.sh [ARCH, default 90 (H100/H200)]
set -euo pipefail
ARCH=${1:-90}
ROOT=$(git rev-parse --show-toplevel)
HERE="$ROOT/bench/gpu_remote"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
WHEELS=(onnxruntime-gpu==1.31.1 faiss-cpu==1.15.1 grpcio==1.85.3 grpcio-health-checking==1.85.1
        grpcio-reflection==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2 pymilvus==3.0.2 milvus-lite==3.2.2
        orjson==3.13.0 python-dotenv==1.2.4 cachetools==7.3.3 onnx==1.23.2 py-spy==0.4.3)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$WORK/wheels" "${WHEELS[@]}"
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --target "$WORK/site" "$WORK"/wheels/*.whl
python3 "$HERE/keep_one_gpu_arch.py" "$WORK/site/onnxruntime/capi/libonnxruntime_providers_cuda.so" "$ARCH"
rm -rf "$WORK/site/onnx/backend/test/data"
find "$WORK/site" -name '*.pyi' -delete
(cd "$WORK" && tar cf - --exclude='site/onnxruntime*' site | xz -9e -T0 > small.tar.xz)
(cd "$WORK" && tar cf - site/onnxruntime site/onnxruntime_gpu-*.dist-info | xz -9e -T0 > ort.tar.xz)

# Each call carries one folder beside the working tree (tracked and untracked files): 64 MiB in all.
tree=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
room=$(( 64 * 1024 * 1024 - tree - 1024 * 1024 ))
small=$(stat -c %s "$WORK/small.tar.xz")
ort=$(stat -c %s "$WORK/ort.tar.xz")
first=$(( room - small ))
if (( first <= 0 || ort - first > room )); then
  echo "does not fit in two calls: tree $tree, small $small, ort $ort bytes" >&2
  exit 1
fi
rm -rf "$ROOT/.gpua" "$ROOT/.gpub"
mkdir -p "$ROOT/.gpua" "$ROOT/.gpub"
head -c "$first" "$WORK/ort.tar.xz" > "$ROOT/.gpua/ort.part.0"
tail -c +"$(( first + 1 ))" "$WORK/ort.tar.xz" > "$ROOT/.gpub/ort.part.1"
mv "$WORK/small.tar.xz" "$ROOT/.gpua/"
cp "$HERE/call1.sh" "$ROOT/.gpua/"
cp "$HERE/call2.sh" "$ROOT/.gpub/"
for folder in /.gpua/ /.gpub/; do
  grep -qxF "$folder" "$ROOT/.git/info/exclude" || echo "$folder" >> "$ROOT/.git/info/exclude"
done
du -cb "$ROOT/.gpua"/* | tail -1
du -cb "$ROOT/.gpub"/* | tail -1
echo "now: device run 'bash .gpua/call1.sh' carrying .gpua, then at once 'bash .gpub/call2.sh' carrying .gpub"
