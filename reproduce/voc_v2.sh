#!/usr/bin/env bash
# DeepLab v2 ResNet-101 MSC (COCO init) trained on VOC 2012 train_aug, evaluated on val
# Train from the published recipe (reproduce/configs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k.yaml), then evaluate and compare with the
# paper: 76.35 mIoU, 77.69 with dense CRF (DeepLab v2, Table 4).
# Steps: check inputs -> convert the init weights -> [build train_aug] -> train (resumes) -> evaluate -> report.
# Rerun the same command after an interruption: finished steps are skipped and training resumes from
# its last checkpoint. The work is done in Python (reproduce.train, reproduce.evaluate, the converters).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: reproduce/voc_v2.sh [--data-root DIR] [--models-dir DIR] [--out DIR] [options]

DeepLab v2 ResNet-101 MSC (COCO init) trained on VOC 2012 train_aug, evaluated on val
Published: 76.35 mIoU, 77.69 with dense CRF (DeepLab v2, Table 4).

  --data-root DIR     folder holding the dataset (VOCdevkit/VOC2012 and benchmark_RELEASE; default: data)
  --models-dir DIR    folder holding the official source weights (default: data/models)
  --out DIR           run + results folder (default: runs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k)
  --gpus N            train on N GPUs of this machine with torchrun (default: 1 process)
  --amp               mixed precision + channels-last memory format (CUDA)
  --device DEV        cpu or cuda (default: cuda when available)
  --workers N         DataLoader workers (default: the config's)
  --smoke             generated miniature data + random-weight official-format source weights,
                      2 iterations on the CPU, same steps (numbers are meaningless; < 3 minutes)
  -h, --help          this help
EOF
}

DATA_ROOT=data
MODELS_DIR=data/models
OUT=""
GPUS=1
DEVICE=""
WORKERS=""
SMOKE=0
TRAIN_EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-root) DATA_ROOT="$2"; shift 2 ;;
    --models-dir) MODELS_DIR="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --gpus) GPUS="$2"; shift 2 ;;
    --amp) TRAIN_EXTRA+=(--amp --channels-last); shift ;;
    --device) DEVICE="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
CONFIG="$REPO/reproduce/configs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k.yaml"
OUT="${OUT:-runs/deeplabv2_resnet101_msc-cocoinit-vocaug-321-20k}"
EVAL_EXTRA=()
TITLE_NOTE=""
STEPS=6
step() { echo "== [$1/$STEPS] $2 ($(date +%H:%M:%S))"; }

if [[ $SMOKE == 1 ]]; then
  SMOKE_DIR="$OUT/smoke"
  echo "== smoke run: miniature data + random-weight official-format source weights in $SMOKE_DIR"
  "$PYTHON" -m reproduce.train --config "$CONFIG" --smoke "$SMOKE_DIR" --write-smoke-inputs "$SMOKE_DIR"
  TRAIN_EXTRA+=(--smoke "$SMOKE_DIR")
  DATA_ROOT="$SMOKE_DIR/data"
  DEVICE=cpu
  WORKERS=0
  GPUS=1
  EVAL_EXTRA=(--crop-size 257 --quiet)
  TITLE_NOTE=" (SMOKE RUN: random weights, miniature data; the numbers mean nothing)"
fi
[[ -n "$DEVICE" ]] && TRAIN_EXTRA+=(--device "$DEVICE")
[[ -n "$WORKERS" ]] && TRAIN_EXTRA+=(--workers "$WORKERS")
EVAL_DEVICE=("--device" "${DEVICE:-auto}")
EVAL_WORKERS=("--workers" "${WORKERS:-2}")

# ---- init weights: the converted MS-COCO init.caffemodel
if [[ $SMOKE == 1 ]]; then
  SOURCE="$SMOKE_DIR/weights/init.caffemodel"
  INIT="$SMOKE_DIR/weights/deeplabv1_resnet101_coco_init.pth"
else
  SOURCE="$MODELS_DIR/deeplabv2_resnet101/init.caffemodel"
  INIT="$MODELS_DIR/deeplabv2_resnet101/deeplabv1_resnet101_coco_init.pth"
  TRAIN_EXTRA+=(--init-weights "$INIT")
fi
step 1 "converting the init weights ($SOURCE -> $INIT)"
if [[ ! -f "$INIT" && ! -f "$SOURCE" ]]; then
  echo "error: $SOURCE not found. It is init.caffemodel (MS-COCO pretrained) from the official DeepLab v2" >&2
  echo "       ResNet-101 bundle http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/prototxt_and_model.zip" >&2
  echo "       (converters/releases.py: coco_init); download and unzip it there, or pass --models-dir DIR." >&2
  exit 1
fi
if [[ -f "$INIT" ]]; then
  echo "   already converted: $INIT"
else
  # caffe2torch explains where to download the caffemodel when it is missing
  "$PYTHON" "$REPO/converters/caffe2torch.py" --dataset coco_init --caffemodel "$SOURCE" --out "$INIT"
fi

step 2 "VOC 2012 train_aug (SegmentationClassAug from SBD)"
if [[ -f "$DATA_ROOT/VOCdevkit/VOC2012/ImageSets/SegmentationAug/train_aug.txt" ]]; then
  echo "   already built"
elif [[ -d "$DATA_ROOT/VOCdevkit/VOC2012" && -d "$DATA_ROOT/benchmark_RELEASE" ]]; then
  "$PYTHON" -m reproduce.prepare voc_aug --voc-root "$DATA_ROOT/VOCdevkit" --sbd-root "$DATA_ROOT/benchmark_RELEASE"
else
  echo "error: need VOC 2012 at $DATA_ROOT/VOCdevkit/VOC2012 and SBD at $DATA_ROOT/benchmark_RELEASE" >&2
  echo "       (VOCtrainval_11-May-2012.tar and benchmark.tgz; see README, 'Datasets')" >&2
  exit 1
fi

step 3 "checking data and weights"
"$PYTHON" -m reproduce.train --config "$CONFIG" --data-root "$DATA_ROOT/VOCdevkit" "${TRAIN_EXTRA[@]}" --check

step 4 "training (progress bar shows iterations and time left; rerun to resume)"
TRAIN_CMD=("$PYTHON" -m reproduce.train)
if [[ "$GPUS" -gt 1 ]]; then
  TRAIN_CMD=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m reproduce.train)
fi
"${TRAIN_CMD[@]}" --config "$CONFIG" --data-root "$DATA_ROOT/VOCdevkit" --out "$OUT/train" "${TRAIN_EXTRA[@]}"
WEIGHTS="$OUT/train/final.pth"

step 5 "evaluating: eval"
"$PYTHON" -m reproduce.evaluate --weights "$WEIGHTS" --dataset voc12 --root "$DATA_ROOT/VOCdevkit" --split val --protocol pad --crf \
  --compare-to 'deeplab_v2_resnet101_voc12_val[5]' --compare-to 'deeplab_v2_resnet101_voc12_val[6]' \
  "${EVAL_DEVICE[@]}" "${EVAL_WORKERS[@]}" --out "$OUT/eval" "${EVAL_EXTRA[@]}"

step $STEPS "report"
"$PYTHON" -m reproduce._smoke report --out "$OUT/report.md" --title "DeepLab v2 ResNet-101 MSC (COCO init) trained on VOC 2012 train_aug, evaluated on val$TITLE_NOTE" "$OUT/eval"
echo "== done: $OUT/report.md"
cat "$OUT/report.md"
