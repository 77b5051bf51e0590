#!/usr/bin/env bash
# DeepLab v2 ResNet-101 MSC (COCO init) trained on COCO-Stuff 10k train, evaluated on the 1k test list
# Train from the published recipe (reproduce/configs/deeplabv2_resnet101_msc-cocoinit-cocostuff10k-321-20k.yaml), then evaluate and compare with the
# paper: 34.4 mIoU without CRF (COCO-Stuff 10k README; kazuto1011: 34.8, 35.6 with CRF).
# The recipe is data (reproduce/configs/) run by Python: this is python -m reproduce.recipe cocostuff10k_v2 "$@".
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m reproduce.recipe --prog "reproduce/cocostuff10k_v2.sh" cocostuff10k_v2 "$@"
