#!/usr/bin/env bash
# DeepLab v2 ResNet-101 MSC (COCO init) trained on COCO-Stuff 164k train2017, evaluated on val2017
# Train from the published recipe (reproduce/configs/deeplabv2_resnet101_msc-cocoinit-cocostuff164k-321-100k.yaml), then evaluate and compare with the
# paper: no official ResNet-101 number; kazuto1011's run of this recipe: 39.1 mIoU, 39.7 with CRF.
# The recipe is data (reproduce/configs/) run by Python: this is python -m reproduce.recipe cocostuff164k_v2 "$@".
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m reproduce.recipe --prog "reproduce/cocostuff164k_v2.sh" cocostuff164k_v2 "$@"
