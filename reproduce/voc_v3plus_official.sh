#!/usr/bin/env bash
# Reproduce DeepLab v3+ Xception-65 (zoo xception65_coco_voc_trainaug) on PASCAL VOC 2012 val from the official
# TF checkpoint deeplabv3_pascal_train_aug_2018_01_04: convert -> evaluate at OS 16 single scale and at OS 8
# with scales 0.5:0.25:1.75 + flip (pad to 513) -> compare with the zoo's 82.20 / 83.58 mIoU.
# The recipe is data (reproduce/configs/) run by Python: this is python -m reproduce.recipe voc_v3plus_official "$@".
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m reproduce.recipe --prog "reproduce/voc_v3plus_official.sh" voc_v3plus_official "$@"
