#!/usr/bin/env bash
# DeepLab v2 ResNet-101 MSC (COCO init) trained on VOC 2012 train_aug, evaluated on val
# Train from the published recipe (reproduce/configs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k.yaml), then evaluate and compare with the
# paper: 76.35 mIoU, 77.69 with dense CRF (DeepLab v2, Table 4).
# Steps: check inputs -> convert the init weights -> [build train_aug] -> train (resumes) -> evaluate -> report.
# The steps are shared with the other recipes: reproduce/lib/recipe.sh.
set -euo pipefail
# shellcheck source=lib/recipe.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"

RECIPE_TITLE="DeepLab v2 ResNet-101 MSC (COCO init) trained on VOC 2012 train_aug, evaluated on val"
RECIPE_PUBLISHED="76.35 mIoU, 77.69 with dense CRF (DeepLab v2, Table 4)."
RECIPE_CONFIG=deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k
RECIPE_INIT=coco_init
RECIPE_DATA_HELP="VOCdevkit/VOC2012 and benchmark_RELEASE"
RECIPE_DATA_DIR=VOCdevkit
RECIPE_PREPARE=voc_aug
RECIPE_DATASET=voc12 RECIPE_SPLIT=val RECIPE_PROTOCOL=pad
RECIPE_SMOKE_CROP=257

recipe_eval eval --crf --compare-to 'deeplab_v2_resnet101_voc12_val[5]' --compare-to 'deeplab_v2_resnet101_voc12_val[6]'

recipe_train "$@"
