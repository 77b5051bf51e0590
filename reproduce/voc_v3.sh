#!/usr/bin/env bash
# DeepLab v3 ResNet-101 (ImageNet init) trained on VOC 2012 train_aug at OS 16, evaluated on val
# Train from the published recipe (reproduce/configs/deeplabv3_resnet101-os16-vocaug-513-30k.yaml), then evaluate and compare with the
# paper: 77.21 (OS 16), 78.51 (OS 8), 79.77 (OS 8, multi-scale + flip) mIoU (DeepLab v3, Table 6).
# The recipe is data (reproduce/configs/) run by Python: this is python -m reproduce.recipe voc_v3 "$@".
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m reproduce.recipe --prog "reproduce/voc_v3.sh" voc_v3 "$@"
