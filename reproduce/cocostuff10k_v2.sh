#!/usr/bin/env bash
# DeepLab v2 ResNet-101 MSC (COCO init) trained on COCO-Stuff 10k train, evaluated on the 1k test list
# Train from the published recipe (reproduce/configs/deeplabv2_resnet101_msc-cocoinit-cocostuff10k-321-20k.yaml), then evaluate and compare with the
# paper: 34.4 mIoU without CRF (COCO-Stuff 10k README; kazuto1011: 34.8, 35.6 with CRF).
# Steps: check inputs -> convert the init weights -> train (resumes) -> evaluate -> report.
# The steps are shared with the other recipes: reproduce/lib/recipe.sh.
set -euo pipefail
# shellcheck source=lib/recipe.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"

RECIPE_TITLE="DeepLab v2 ResNet-101 MSC (COCO init) trained on COCO-Stuff 10k train, evaluated on the 1k test list"
RECIPE_PUBLISHED="34.4 mIoU without CRF (COCO-Stuff 10k README; kazuto1011: 34.8, 35.6 with CRF)."
RECIPE_CONFIG=deeplabv2_resnet101_msc-cocoinit-cocostuff10k-321-20k
RECIPE_INIT=coco_init
RECIPE_DATA_HELP="cocostuff-10k-v1.1"
RECIPE_DATA_DIR=cocostuff-10k-v1.1
RECIPE_DATASET=cocostuff10k RECIPE_SPLIT=test RECIPE_PROTOCOL=warp
RECIPE_SMOKE_CROP=161

recipe_eval eval --crf --compare-to 'deeplab_v2_cocostuff10k[0]' --compare-to 'kazuto1011_deeplab_v2[1]'

recipe_train "$@"
