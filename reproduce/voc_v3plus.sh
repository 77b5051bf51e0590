#!/usr/bin/env bash
# DeepLab v3+ ResNet-101 (ImageNet init) trained on VOC 2012 train_aug at OS 16, evaluated on val
# Train from the published recipe (reproduce/configs/deeplabv3plus_resnet101-os16-vocaug-513-30k.yaml), then evaluate and compare with the
# paper: 78.85 (OS 16), 79.35 (OS 8), 80.57 (OS 8, multi-scale + flip) mIoU (DeepLab v3+, Table 3).
# Steps: check inputs -> convert the init weights -> [build train_aug] -> train (resumes) -> evaluate -> report.
# The steps are shared with the other recipes: reproduce/lib/recipe.sh.
set -euo pipefail
# shellcheck source=lib/recipe.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"

RECIPE_TITLE="DeepLab v3+ ResNet-101 (ImageNet init) trained on VOC 2012 train_aug at OS 16, evaluated on val"
RECIPE_PUBLISHED="78.85 (OS 16), 79.35 (OS 8), 80.57 (OS 8, multi-scale + flip) mIoU (DeepLab v3+, Table 3)."
RECIPE_CONFIG=deeplabv3plus_resnet101-os16-vocaug-513-30k
RECIPE_INIT=resnet_v1_101_2018_05_04
RECIPE_DATA_HELP="VOCdevkit/VOC2012 and benchmark_RELEASE"
RECIPE_DATA_DIR=VOCdevkit
RECIPE_PREPARE=voc_aug
RECIPE_DATASET=voc12 RECIPE_SPLIT=val RECIPE_PROTOCOL=pad
RECIPE_SMOKE_CROP=129

recipe_eval eval_os16 --output-stride 16 --compare-to 'deeplab_v3plus_resnet101_voc12_val[0]'
recipe_eval eval_os8 --output-stride 8 --compare-to 'deeplab_v3plus_resnet101_voc12_val[3]'
recipe_eval eval_os8_ms_flip --output-stride 8 --scales 0.5:0.25:1.75 --flip --compare-to 'deeplab_v3plus_resnet101_voc12_val[5]'

recipe_train "$@"
