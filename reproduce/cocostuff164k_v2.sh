#!/usr/bin/env bash
# DeepLab v2 ResNet-101 MSC (COCO init) trained on COCO-Stuff 164k train2017, evaluated on val2017
# Train from the published recipe (reproduce/configs/deeplabv2_resnet101_msc-cocoinit-cocostuff164k-321-100k.yaml), then evaluate and compare with the
# paper: no official ResNet-101 number; kazuto1011's run of this recipe: 39.1 mIoU, 39.7 with CRF.
# Steps: check inputs -> convert the init weights -> train (resumes) -> evaluate -> report.
# The steps are shared with the other recipes: reproduce/lib/recipe.sh.
set -euo pipefail
# shellcheck source=lib/recipe.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"

RECIPE_TITLE="DeepLab v2 ResNet-101 MSC (COCO init) trained on COCO-Stuff 164k train2017, evaluated on val2017"
RECIPE_PUBLISHED="no official ResNet-101 number; kazuto1011's run of this recipe: 39.1 mIoU, 39.7 with CRF."
RECIPE_CONFIG=deeplabv2_resnet101_msc-cocoinit-cocostuff164k-321-100k
RECIPE_INIT=coco_init
RECIPE_DATA_HELP="cocostuff/images and cocostuff/annotations"
RECIPE_DATA_DIR=cocostuff
RECIPE_DATASET=cocostuff164k RECIPE_SPLIT=val2017 RECIPE_PROTOCOL=pad
RECIPE_SMOKE_CROP=257

recipe_eval eval --crf --compare-to 'kazuto1011_deeplab_v2[2]' --compare-to 'kazuto1011_deeplab_v2[3]'

recipe_train "$@"
