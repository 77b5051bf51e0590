#!/usr/bin/env bash
# Reproduce DeepLab v2 ResNet-101 (MSC, ASPP-L, COCO-pretrained) on PASCAL VOC 2012 val from the official
# caffemodel: convert -> evaluate (pad to 513, MSC max fusion in the model) with and without dense CRF ->
# compare with the paper's 76.35 / 77.69 mIoU (TPAMI Table 4).
# The steps are shared with the other recipes: reproduce/lib/recipe.sh.
set -euo pipefail
# shellcheck source=lib/recipe.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"

RECIPE_ABOUT="Reproduce DeepLab v2 ResNet-101 on VOC 2012 val (paper: 76.35 mIoU, 77.69 with CRF)."
RECIPE_WEIGHTS_HELP="folder holding train_iter_20000.caffemodel from the official
deeplab_aspp_resnet101 prototxt_and_model.zip (default: data/models)"
RECIPE_SMOKE_HELP="run the whole script on a generated miniature VOC and a random-weight
official-format caffemodel (CPU, small crop; numbers are meaningless)"
RECIPE_WRITES="Writes OUT/deeplabv2_resnet101_msc_voc12.pth (+ .json provenance), OUT/eval/result.{json,md}
(both the no-CRF and the CRF result, from one inference pass) and OUT/report.md."
RECIPE_OPTIONS=(crf-workers)
RECIPE_REPORT_TITLE="DeepLab v2 ResNet-101, VOC 2012 val"
RECIPE_KIND=v2
RECIPE_FORMAT=caffe RECIPE_RELEASE=voc12
RECIPE_MODEL=deeplabv2_resnet101_msc
RECIPE_DATASET=voc12 RECIPE_SPLIT=val RECIPE_PROTOCOL=pad
RECIPE_SMOKE_CROP=129

recipe_eval eval --say "evaluating on VOC 2012 val (pad 513, MSC in the model), without and with dense CRF" \
  --crf --compare-to 'deeplab_v2_resnet101_voc12_val[5]' --compare-to 'deeplab_v2_resnet101_voc12_val[6]'

recipe_official "$@"
