#!/usr/bin/env bash
# DeepLab v2 ResNet-101 MSC (COCO init) trained on VOC 2012 train_aug, evaluated on val
# Train from the published recipe (reproduce/configs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k.yaml), then evaluate and compare with the
# paper: 76.35 mIoU, 77.69 with dense CRF (DeepLab v2, Table 4).
# The recipe is data (reproduce/configs/) run by Python: this is python -m reproduce.recipe voc_v2 "$@".
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m reproduce.recipe --prog "reproduce/voc_v2.sh" voc_v2 "$@"
