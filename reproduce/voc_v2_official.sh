#!/usr/bin/env bash
# Reproduce DeepLab v2 ResNet-101 (MSC, ASPP-L, COCO-pretrained) on PASCAL VOC 2012 val from the official
# caffemodel: convert -> evaluate (pad to 513, MSC max fusion in the model) with and without dense CRF ->
# compare with the paper's 76.35 / 77.69 mIoU (TPAMI Table 4).
# The recipe is data (reproduce/configs/) run by Python: this is python -m reproduce.recipe voc_v2_official "$@".
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m reproduce.recipe --prog "reproduce/voc_v2_official.sh" voc_v2_official "$@"
