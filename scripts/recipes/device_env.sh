# Sourced by the scripts that run on the lent GPU machine (no registry there): lays out the import
# package by hand (qabridge/ with the stage folders inside) and points the offline base at .dev/base.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1 PYTHONSAFEPATH=1
rm -rf /tmp/site && mkdir -p /tmp/site/qabridge
cp -r qabridge/. /tmp/site/qabridge/ && for d in train bridge export; do cp -r "$d" "/tmp/site/qabridge/$d"; done
# bitsandbytes (for --quantize) travels trimmed to its CUDA 13 libraries: scripts/recipes/prepare_device.py.
if [[ -f .dev/bitsandbytes.tar.xz ]]; then tar xJf .dev/bitsandbytes.tar.xz -C /tmp/site; fi
export PYTHONPATH=/tmp/site QABRIDGE_OFFLINE_BASE_DIR=$PWD/.dev/base
OUTDIR=${OUT:-/tmp/out}
mkdir -p "$OUTDIR"
