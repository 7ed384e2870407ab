#!/usr/bin/env bash
# What benchmarks/bench_gpu.py needs on a lent GPU machine that its image lacks, made here (where the package
# registries answer): wheels for Python 3.12 on x86-64 in .whl/ and the SAM demo photos in .gpu/ (both ignored by
# git; name them in the device call's `carry`). The machine's image already has torch, torchvision, transformers,
# timm, safetensors, huggingface_hub, regex, tqdm, numpy and pillow. Run in the repository root:
#     bash tools/gpu_wheels.sh
# then, on the device (one call; see benchmarks/bench_gpu.py):
#     set -o pipefail; python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --images .gpu --out $OUT/gpu.md \
#     2>&1 | tee $OUT/gpu.log
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .gpu
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 segment-anything==1.0 pycocotools==2.0.11
photos="../shared/data/sam_demo_images"
if [ -d "$photos" ]; then cp "$photos"/*.jpg .gpu/; else echo "no $photos: bench_gpu.py will use random images"; fi
ls -la .whl .gpu
du -sh .whl .gpu
