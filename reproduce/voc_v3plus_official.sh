#!/usr/bin/env bash
# Reproduce DeepLab v3+ Xception-65 (zoo xception65_coco_voc_trainaug) on PASCAL VOC 2012 val from the official
# TF checkpoint deeplabv3_pascal_train_aug_2018_01_04: convert -> evaluate at OS 16 single scale and at OS 8
# with scales 0.5:0.25:1.75 + flip (pad to 513) -> compare with the zoo's 82.20 / 83.58 mIoU.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: reproduce/voc_v3plus_official.sh [--data-root DIR] [--weights-dir DIR] [--out DIR] [options]

Reproduce DeepLab v3+ Xception-65 on VOC 2012 val (model zoo: 82.20 mIoU at OS 16, 83.58 at OS 8
with scales 0.5:0.25:1.75 and flip).

  --data-root DIR     folder holding VOCdevkit/VOC2012 (default: data)
  --weights-dir DIR   folder holding deeplabv3_pascal_train_aug/model.ckpt.{index,data-00000-of-00001},
                      i.e. where deeplabv3_pascal_train_aug_2018_01_04.tar.gz was extracted
                      (default: data/models)
  --out DIR           results folder (default: results/voc_v3plus_official)
  --device DEV        cpu, cuda or auto (default: auto)
  --amp               float16 autocast on CUDA
  --workers N         DataLoader workers (default: 2)
  --smoke             run the whole script on a generated miniature VOC and a random-weight TF
                      checkpoint in the official format (needs TensorFlow; CPU, small crop, the
                      multi-scale run on one image; numbers are meaningless)
  -h, --help          this help

Writes OUT/deeplabv3plus_xception65_voc12.pth (+ .json provenance), OUT/os16/result.{json,md},
OUT/os8_ms_flip/result.{json,md} and OUT/report.md.
EOF
}

DATA_ROOT=data
WEIGHTS_DIR=data/models
OUT=results/voc_v3plus_official
DEVICE=auto
WORKERS=2
AMP=()
SMOKE=0
TITLE_NOTE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-root) DATA_ROOT="$2"; shift 2 ;;
    --weights-dir) WEIGHTS_DIR="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --amp) AMP=(--amp); shift ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
EXTRA=()
EXTRA_MS=()
if [[ $SMOKE == 1 ]]; then
  echo "== smoke run: miniature VOC + random-weight official-format TF checkpoint in $OUT/smoke"
  "$PYTHON" -m reproduce._smoke make v3plus --dir "$OUT/smoke"
  DATA_ROOT="$OUT/smoke/data"
  WEIGHTS_DIR="$OUT/smoke/weights"
  DEVICE=cpu
  WORKERS=0
  EXTRA=(--crop-size 129 --quiet)
  EXTRA_MS=(--limit 1)  # 6 scales x 2 flips of Xception-65 at OS 8: one image is enough for a smoke run
  TITLE_NOTE=" (SMOKE RUN: random weights, miniature data; the numbers mean nothing)"
fi

echo "== checking inputs"
CHECKPOINT="$("$PYTHON" -m reproduce._smoke check v3plus --data-root "$DATA_ROOT" --weights-dir "$WEIGHTS_DIR")"

WEIGHTS="$OUT/deeplabv3plus_xception65_voc12.pth"
echo "== converting $CHECKPOINT -> $WEIGHTS"
"$PYTHON" "$REPO/converters/tf2torch.py" --dataset deeplabv3_pascal_train_aug_2018_01_04 \
  --checkpoint "$CHECKPOINT" --out "$WEIGHTS"

COMMON=(--model deeplabv3plus_xception65 --weights "$WEIGHTS" --dataset voc12 --root "$DATA_ROOT" --split val
        --protocol pad --workers "$WORKERS" --device "$DEVICE" "${AMP[@]}")

echo "== evaluating on VOC 2012 val: OS 16, single scale (pad 513)"
"$PYTHON" -m reproduce.evaluate "${COMMON[@]}" --output-stride 16 --scales 1.0 \
  --compare-to 'deeplab_v3plus_xception65_voc12_val[0]' --out "$OUT/os16" "${EXTRA[@]}"

echo "== evaluating on VOC 2012 val: OS 8, scales 0.5:0.25:1.75 + flip (pad 513)"
"$PYTHON" -m reproduce.evaluate "${COMMON[@]}" --output-stride 8 --scales 0.5:0.25:1.75 --flip \
  --compare-to 'deeplab_v3plus_xception65_voc12_val[3]' --out "$OUT/os8_ms_flip" "${EXTRA[@]}" "${EXTRA_MS[@]}"

"$PYTHON" -m reproduce._smoke report --out "$OUT/report.md" \
  --title "DeepLab v3+ Xception-65, VOC 2012 val$TITLE_NOTE" "$OUT/os16" "$OUT/os8_ms_flip"
cat "$OUT/report.md"
