#!/usr/bin/env bash
# Reproduce DeepLab v2 ResNet-101 (MSC, ASPP-L, COCO-pretrained) on PASCAL VOC 2012 val from the official
# caffemodel: convert -> evaluate (pad to 513, MSC max fusion in the model) with and without dense CRF ->
# compare with the paper's 76.35 / 77.69 mIoU (TPAMI Table 4).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: reproduce/voc_v2_official.sh [--data-root DIR] [--weights-dir DIR] [--out DIR] [options]

Reproduce DeepLab v2 ResNet-101 on VOC 2012 val (paper: 76.35 mIoU, 77.69 with CRF).

  --data-root DIR     folder holding VOCdevkit/VOC2012 (default: data)
  --weights-dir DIR   folder holding train_iter_20000.caffemodel from the official
                      deeplab_aspp_resnet101 prototxt_and_model.zip (default: data/models)
  --out DIR           results folder (default: results/voc_v2_official)
  --device DEV        cpu, cuda or auto (default: auto)
  --workers N         DataLoader workers (default: 2)
  --crf-workers N     dense-CRF worker processes (default: 2)
  --smoke             run the whole script on a generated miniature VOC and a random-weight
                      official-format caffemodel (CPU, small crop; numbers are meaningless)
  -h, --help          this help

Writes OUT/deeplabv2_resnet101_msc_voc12.pth (+ .json provenance), OUT/eval/result.{json,md}
(both the no-CRF and the CRF result, from one inference pass) and OUT/report.md.
EOF
}

DATA_ROOT=data
WEIGHTS_DIR=data/models
OUT=results/voc_v2_official
DEVICE=auto
WORKERS=2
CRF_WORKERS=2
SMOKE=0
TITLE_NOTE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-root) DATA_ROOT="$2"; shift 2 ;;
    --weights-dir) WEIGHTS_DIR="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --crf-workers) CRF_WORKERS="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
EXTRA=()
if [[ $SMOKE == 1 ]]; then
  echo "== smoke run: miniature VOC + random-weight official-format caffemodel in $OUT/smoke"
  "$PYTHON" -m reproduce._smoke make v2 --dir "$OUT/smoke"
  DATA_ROOT="$OUT/smoke/data"
  WEIGHTS_DIR="$OUT/smoke/weights"
  DEVICE=cpu
  WORKERS=0
  EXTRA=(--crop-size 129 --quiet)
  TITLE_NOTE=" (SMOKE RUN: random weights, miniature data; the numbers mean nothing)"
fi

echo "== checking inputs"
CAFFEMODEL="$("$PYTHON" -m reproduce._smoke check v2 --data-root "$DATA_ROOT" --weights-dir "$WEIGHTS_DIR")"

WEIGHTS="$OUT/deeplabv2_resnet101_msc_voc12.pth"
echo "== converting $CAFFEMODEL -> $WEIGHTS"
"$PYTHON" "$REPO/converters/caffe2torch.py" --dataset voc12 --caffemodel "$CAFFEMODEL" --out "$WEIGHTS"

echo "== evaluating on VOC 2012 val (pad 513, MSC in the model), without and with dense CRF"
"$PYTHON" -m reproduce.evaluate --model deeplabv2_resnet101_msc --weights "$WEIGHTS" \
  --dataset voc12 --root "$DATA_ROOT" --split val --protocol pad \
  --crf --crf-workers "$CRF_WORKERS" --workers "$WORKERS" --device "$DEVICE" \
  --compare-to 'deeplab_v2_resnet101_voc12_val[5]' --compare-to 'deeplab_v2_resnet101_voc12_val[6]' \
  --out "$OUT/eval" "${EXTRA[@]}"

"$PYTHON" -m reproduce._smoke report --out "$OUT/report.md" --title "DeepLab v2 ResNet-101, VOC 2012 val$TITLE_NOTE" "$OUT/eval"
cat "$OUT/report.md"
