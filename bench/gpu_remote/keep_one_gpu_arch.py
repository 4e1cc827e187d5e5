"""Blanks the GPU code of every architecture but one inside a shared library's CUDA fat binaries.

ONNX Runtime's CUDA provider (libonnxruntime_providers_cuda.so, 284 MB in 1.31.1) carries machine code for
sm_75, 80, 86, 89, 90 and 120. A machine with one kind of GPU loads only its own, so zeroing the others
keeps the file's layout, and the file then compresses to about a third: small enough to carry to a GPU
machine that cannot download it. Run: python keep_one_gpu_arch.py LIB ARCH (e.g. 90 for an H100/H200).
"""

from __future__ import annotations

import collections
import struct
import sys
from pathlib import Path

MAGIC = struct.pack("<I", 0xBA55ED50)  # a fat binary's header
ELF, PTX = 2, 1


def entries(data: bytearray) -> list[tuple[int, int, int, int]]:
    """(kind, arch, payload offset, payload size) of every entry of every fat binary in data."""
    found, pos = [], 0
    while (start := data.find(MAGIC, pos)) >= 0:
        version, header_size, fat_size = struct.unpack_from("<HHQ", data, start + 4)
        end = start + 16 + fat_size
        if version != 1 or header_size != 16 or fat_size <= 0 or end > len(data):
            pos = start + 4
            continue
        entry, these = start + 16, []
        while entry < end:
            kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, entry)
            arch = struct.unpack_from("<I", data, entry + 28)[0]
            if kind not in (ELF, PTX) or entry_header < 64 or entry + entry_header + size > end + 64:
                these = []
                break
            these.append((kind, arch, entry + entry_header, size))
            entry += entry_header + size
        found += these
        pos = end if these else start + 4
    return found


def main() -> None:
    path, keep = Path(sys.argv[1]), int(sys.argv[2])
    data = bytearray(path.read_bytes())
    found = entries(data)
    by_arch = collections.Counter()
    for kind, arch, _, size in found:
        by_arch[f"{'sm' if kind == ELF else 'compute'}_{arch}"] += size
    print({k: f"{v >> 20} MiB" for k, v in sorted(by_arch.items())})
    if not any(kind == ELF and arch == keep for kind, arch, *_ in found):
        sys.exit(f"no sm_{keep} machine code in {path}: nothing blanked")
    blanked = 0
    for kind, arch, offset, size in found:
        if not (kind == ELF and arch == keep):
            data[offset:offset + size] = bytes(size)
            blanked += size
    path.write_bytes(data)
    print(f"kept sm_{keep}; blanked {blanked >> 20} MiB of {sum(s for *_, s in found) >> 20} MiB")


if __name__ == "__main__":
    main()
