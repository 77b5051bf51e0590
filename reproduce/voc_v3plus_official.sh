#!/usr/bin/env bash
# Reproduce DeepLab v3+ Xception-65 (zoo xception65_coco_voc_trainaug) on PASCAL VOC 2012 val from the official
# TF checkpoint deeplabv3_pascal_train_aug_2018_01_04: convert -> evaluate at OS 16 single scale and at OS 8
# with scales 0.5:0.25:1.75 + flip (pad to 513) -> compare with the zoo's 82.20 / 83.58 mIoU.
# The steps are shared with the other recipes: reproduce/lib/recipe.sh.
set -euo pipefail
# shellcheck source=lib/recipe.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/recipe.sh"

RECIPE_ABOUT="Reproduce DeepLab v3+ Xception-65 on VOC 2012 val (model zoo: 82.20 mIoU at OS 16, 83.58 at OS 8
with scales 0.5:0.25:1.75 and flip)."
RECIPE_WEIGHTS_HELP="folder holding deeplabv3_pascal_train_aug/model.ckpt.{index,data-00000-of-00001},
i.e. where deeplabv3_pascal_train_aug_2018_01_04.tar.gz was extracted
(default: data/models)"
RECIPE_SMOKE_HELP="run the whole script on a generated miniature VOC and a random-weight TF
checkpoint in the official format (needs TensorFlow; CPU, small crop, the
multi-scale run on one image; numbers are meaningless)"
RECIPE_WRITES="Writes OUT/deeplabv3plus_xception65_voc12.pth (+ .json provenance), OUT/os16/result.{json,md},
OUT/os8_ms_flip/result.{json,md} and OUT/report.md."
RECIPE_OPTIONS=(amp)
RECIPE_REPORT_TITLE="DeepLab v3+ Xception-65, VOC 2012 val"
RECIPE_KIND=v3plus
RECIPE_FORMAT=tf RECIPE_RELEASE=deeplabv3_pascal_train_aug_2018_01_04
RECIPE_MODEL=deeplabv3plus_xception65
RECIPE_DATASET=voc12 RECIPE_SPLIT=val RECIPE_PROTOCOL=pad
RECIPE_SMOKE_CROP=129

recipe_eval os16 --say "evaluating on VOC 2012 val: OS 16, single scale (pad 513)" \
  --output-stride 16 --scales 1.0 --compare-to 'deeplab_v3plus_xception65_voc12_val[0]'
# 6 scales x 2 flips of Xception-65 at OS 8: one image is enough for a smoke run
recipe_eval os8_ms_flip --say "evaluating on VOC 2012 val: OS 8, scales 0.5:0.25:1.75 + flip (pad 513)" \
  --output-stride 8 --scales 0.5:0.25:1.75 --flip --compare-to 'deeplab_v3plus_xception65_voc12_val[3]' \
  --if-smoke --limit 1

recipe_official "$@"
