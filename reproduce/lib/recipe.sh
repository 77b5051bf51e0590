# shellcheck shell=bash
# Shared body of the reproduction scripts in reproduce/. Each script sets the RECIPE_* variables that say what
# differs (title, published rows, dataset layout, weights release, evaluations), declares its evaluations with
# recipe_eval, then hands its arguments to one of the two recipes:
#
#   recipe_train "$@"      check inputs -> convert the init weights -> [prepare data] -> train (resumes)
#                          -> evaluate -> report            (voc_v2.sh, voc_v3.sh, cocostuff10k_v2.sh, ...)
#   recipe_official "$@"   check inputs -> convert the official weights -> evaluate -> report
#                                                           (voc_v2_official.sh, voc_v3plus_official.sh)
#
# Rerun the same command after an interruption: finished steps are skipped and training resumes from its last
# checkpoint. The work is done in Python (reproduce.train, reproduce.evaluate, reproduce._smoke, converters/).
#
# Variables (set before calling a recipe):
#   RECIPE_TITLE          one-line description: help text and report title (RECIPE_REPORT_TITLE overrides the latter)
#   RECIPE_DATASET        reproduce.evaluate --dataset; RECIPE_SPLIT, RECIPE_PROTOCOL: its --split, --protocol
#   RECIPE_DATA_DIR       the dataset folder below --data-root (empty: --data-root itself)
#   RECIPE_SMOKE_CROP     evaluation crop size of a --smoke run
#   train recipe:    RECIPE_PUBLISHED (help text), RECIPE_DATA_HELP (what --data-root holds), RECIPE_CONFIG (name
#                    in reproduce/configs, also the default --out below runs/), RECIPE_INIT (init weights release:
#                    coco_init or resnet_v1_101_2018_05_04), RECIPE_PREPARE (voc_aug, or empty)
#   official recipe: RECIPE_ABOUT, RECIPE_WEIGHTS_HELP, RECIPE_SMOKE_HELP, RECIPE_WRITES (help text),
#                    RECIPE_KIND (v2 or v3plus: reproduce._smoke make/check), RECIPE_FORMAT (caffe or tf) and
#                    RECIPE_RELEASE (converter --dataset), RECIPE_MODEL (evaluate --model; the converted weights
#                    are OUT/<model>_<dataset>.pth), RECIPE_OPTIONS (extra options: amp, crf-workers)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
RECIPE_SCRIPT="$(basename "${BASH_SOURCE[1]}")"
RECIPE_OPTIONS=()
RECIPE_DATA_DIR=""
RECIPE_PREPARE=""
RECIPE_REPORT_TITLE=""
RECIPE_EVAL_NAMES=()
RECIPE_EVAL_SAY=()
RECIPE_EVAL_ARGS=()
RECIPE_EVAL_SMOKE_ARGS=()

# recipe_eval NAME [--say MESSAGE] ARGS... [--if-smoke ARGS...]
# Declares one evaluation: reproduce.evaluate with ARGS (after the dataset arguments), results in OUT/NAME; the
# arguments after --if-smoke are added in --smoke runs only. MESSAGE is printed before it (default: evaluating: NAME).
recipe_eval() {
  local name="$1" say="evaluating: $1" args=() smoke=() target=args arg
  shift
  if [[ "${1:-}" == --say ]]; then
    say="$2"
    shift 2
  fi
  for arg in "$@"; do
    if [[ "$arg" == --if-smoke ]]; then
      target=smoke
    elif [[ $target == args ]]; then
      args+=("$arg")
    else
      smoke+=("$arg")
    fi
  done
  RECIPE_EVAL_NAMES+=("$name")
  RECIPE_EVAL_SAY+=("$say")
  RECIPE_EVAL_ARGS+=("$(_recipe_quote "${args[@]}")")
  RECIPE_EVAL_SMOKE_ARGS+=("$(_recipe_quote "${smoke[@]}")")
}

_recipe_quote() {
  if [[ $# -gt 0 ]]; then
    printf '%q ' "$@"
  fi
}

# ---- options and help

_recipe_has_option() {
  local option
  for option in "${RECIPE_OPTIONS[@]}"; do
    if [[ "$option" == "$1" ]]; then
      return 0
    fi
  done
  return 1
}

# one option line of the help: the option, then its text (continuation lines aligned under the first)
_recipe_option_help() {
  local first=1 line
  while IFS= read -r line; do
    if [[ $first == 1 ]]; then
      printf '  %-20s%s\n' "$1" "$line"
      first=0
    else
      printf '%22s%s\n' "" "$line"
    fi
  done <<<"$2"
}

_recipe_usage() {
  local weights_flag=--models-dir
  [[ $RECIPE_FAMILY == official ]] && weights_flag=--weights-dir
  echo "Usage: reproduce/$RECIPE_SCRIPT [--data-root DIR] [$weights_flag DIR] [--out DIR] [options]"
  echo
  if [[ $RECIPE_FAMILY == train ]]; then
    echo "$RECIPE_TITLE"
    echo "Published: $RECIPE_PUBLISHED"
    echo
    _recipe_option_help "--data-root DIR" "folder holding the dataset ($RECIPE_DATA_HELP; default: data)"
    _recipe_option_help "--models-dir DIR" "folder holding the official source weights (default: data/models)"
    _recipe_option_help "--out DIR" "run + results folder (default: $RECIPE_DEFAULT_OUT)"
    _recipe_option_help "--gpus N" "train on N GPUs of this machine with torchrun (default: 1 process)"
    _recipe_option_help "--amp" "mixed precision + channels-last memory format (CUDA)"
    _recipe_option_help "--device DEV" "cpu or cuda (default: cuda when available)"
    _recipe_option_help "--workers N" "DataLoader workers (default: the config's)"
    _recipe_option_help "--smoke" "generated miniature data + random-weight official-format source weights,
2 iterations on the CPU, same steps (numbers are meaningless; < 3 minutes)"
    _recipe_option_help "-h, --help" "this help"
  else
    echo "$RECIPE_ABOUT"
    echo
    _recipe_option_help "--data-root DIR" "folder holding VOCdevkit/VOC2012 (default: data)"
    _recipe_option_help "--weights-dir DIR" "$RECIPE_WEIGHTS_HELP"
    _recipe_option_help "--out DIR" "results folder (default: $RECIPE_DEFAULT_OUT)"
    _recipe_option_help "--device DEV" "cpu, cuda or auto (default: auto)"
    if _recipe_has_option amp; then
      _recipe_option_help "--amp" "float16 autocast on CUDA"
    fi
    _recipe_option_help "--workers N" "DataLoader workers (default: 2)"
    if _recipe_has_option crf-workers; then
      _recipe_option_help "--crf-workers N" "dense-CRF worker processes (default: 2)"
    fi
    _recipe_option_help "--smoke" "$RECIPE_SMOKE_HELP"
    _recipe_option_help "-h, --help" "this help"
    echo
    echo "$RECIPE_WRITES"
  fi
}

_recipe_unknown() {
  echo "error: unknown argument '$1' (see --help)" >&2
  exit 2
}

# Sets DATA_ROOT, WEIGHTS_DIR, OUT, GPUS, AMP, DEVICE, WORKERS, CRF_WORKERS, SMOKE from the arguments.
_recipe_parse() {
  DATA_ROOT=data
  WEIGHTS_DIR=data/models
  OUT=""
  GPUS=1
  AMP=0
  DEVICE=""
  WORKERS=""
  CRF_WORKERS=2
  SMOKE=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --data-root) DATA_ROOT="$2"; shift 2 ;;
      --models-dir|--weights-dir)
        _recipe_has_option "${1#--}" || _recipe_unknown "$1"
        WEIGHTS_DIR="$2"; shift 2 ;;
      --out) OUT="$2"; shift 2 ;;
      --gpus) _recipe_has_option gpus || _recipe_unknown "$1"; GPUS="$2"; shift 2 ;;
      --amp) _recipe_has_option amp || _recipe_unknown "$1"; AMP=1; shift ;;
      --device) DEVICE="$2"; shift 2 ;;
      --workers) WORKERS="$2"; shift 2 ;;
      --crf-workers) _recipe_has_option crf-workers || _recipe_unknown "$1"; CRF_WORKERS="$2"; shift 2 ;;
      --smoke) SMOKE=1; shift ;;
      -h|--help) _recipe_usage; exit 0 ;;
      *) _recipe_unknown "$1" ;;
    esac
  done
  OUT="${OUT:-$RECIPE_DEFAULT_OUT}"
}

# ---- the steps

STEP=0
STEPS=0
step() {
  STEP=$((STEP + 1))
  echo "== [$STEP/$STEPS] $1 ($(date +%H:%M:%S))"
}

# A --smoke run: CPU, no DataLoader workers, a small evaluation crop, a warning in the report title.
_recipe_smoke_settings() {
  DEVICE=cpu
  WORKERS=0
  EVAL_EXTRA=(--crop-size "$RECIPE_SMOKE_CROP" --quiet)
  TITLE_NOTE=" (SMOKE RUN: random weights, miniature data; the numbers mean nothing)"
}

# recipe_convert FORMAT RELEASE SOURCE OUT: official weights (caffe: .caffemodel, tf: checkpoint prefix) -> OUT
# (the converters explain where to download the source when it is missing)
recipe_convert() {
  case "$1" in
    caffe) "$PYTHON" "$REPO/converters/caffe2torch.py" --dataset "$2" --caffemodel "$3" --out "$4" ;;
    tf) "$PYTHON" "$REPO/converters/tf2torch.py" --dataset "$2" --checkpoint "$3" --out "$4" ;;
    *) echo "error: unknown weights format '$1'" >&2; exit 2 ;;
  esac
}

# The init weights release RECIPE_INIT: sets INIT_FORMAT, SOURCE (official file), INIT (converted), INIT_PROBE
# (the file that shows the source is there), INIT_WHAT (step text), INIT_MISSING (where to get it).
_recipe_init_release() {
  local smoke real probe=""  # source and converted file: below $SMOKE_DIR/weights (--smoke), below --models-dir
  case "$RECIPE_INIT" in
    coco_init)  # init.caffemodel (MS-COCO pretrained) of the official DeepLab v2 ResNet-101 bundle
      INIT_FORMAT=caffe
      INIT_WHAT="the init weights"
      smoke=(init.caffemodel deeplabv1_resnet101_coco_init.pth)
      real=(deeplabv2_resnet101/init.caffemodel deeplabv2_resnet101/deeplabv1_resnet101_coco_init.pth)
      INIT_MISSING=(
        "It is init.caffemodel (MS-COCO pretrained) from the official DeepLab v2"
        "ResNet-101 bundle http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/prototxt_and_model.zip"
        "(converters/releases.py: coco_init); download and unzip it there, or pass --models-dir DIR.") ;;
    resnet_v1_101_2018_05_04)  # the ImageNet checkpoint of the TF model zoo
      INIT_FORMAT=tf
      INIT_WHAT="the ImageNet checkpoint"
      smoke=(resnet_v1_101_2018_05_04/model.ckpt backbone.pth)
      real=(resnet_v1_101/model.ckpt resnet_v1_101/resnet_v1_101_beta_resnet_v1_101_2018_05_04.pth)
      probe=.index
      INIT_MISSING=(
        "Download the ImageNet checkpoint"
        "http://download.tensorflow.org/models/resnet_v1_101_2018_05_04.tar.gz and extract it in $WEIGHTS_DIR"
        "(python converters/tf2torch.py --help lists the releases), or pass --models-dir DIR.") ;;
    *) echo "error: unknown init weights release '$RECIPE_INIT'" >&2; exit 2 ;;
  esac
  if [[ $SMOKE == 1 ]]; then
    SOURCE="$SMOKE_DIR/weights/${smoke[0]}"
    INIT="$SMOKE_DIR/weights/${smoke[1]}"
  else
    SOURCE="$WEIGHTS_DIR/${real[0]}"
    INIT="$WEIGHTS_DIR/${real[1]}"
  fi
  INIT_PROBE="$SOURCE$probe"
}

_recipe_convert_init() {
  _recipe_init_release
  step "converting $INIT_WHAT ($SOURCE -> $INIT)"
  if [[ ! -f "$INIT" && ! -f "$INIT_PROBE" ]]; then
    echo "error: $INIT_PROBE not found. ${INIT_MISSING[0]}" >&2
    printf '       %s\n' "${INIT_MISSING[@]:1}" >&2
    exit 1
  fi
  if [[ -f "$INIT" ]]; then
    echo "   already converted: $INIT"
  else
    recipe_convert "$INIT_FORMAT" "$RECIPE_INIT" "$SOURCE" "$INIT"
  fi
}

_recipe_prepare() {
  case "$RECIPE_PREPARE" in
    voc_aug)
      step "VOC 2012 train_aug (SegmentationClassAug from SBD)"
      if [[ -f "$DATA_ROOT/VOCdevkit/VOC2012/ImageSets/SegmentationAug/train_aug.txt" ]]; then
        echo "   already built"
      elif [[ -d "$DATA_ROOT/VOCdevkit/VOC2012" && -d "$DATA_ROOT/benchmark_RELEASE" ]]; then
        "$PYTHON" -m reproduce.prepare voc_aug --voc-root "$DATA_ROOT/VOCdevkit" --sbd-root "$DATA_ROOT/benchmark_RELEASE"
      else
        echo "error: need VOC 2012 at $DATA_ROOT/VOCdevkit/VOC2012 and SBD at $DATA_ROOT/benchmark_RELEASE" >&2
        echo "       (VOCtrainval_11-May-2012.tar and benchmark.tgz; see README, 'Datasets')" >&2
        exit 1
      fi ;;
    "") ;;
    *) echo "error: unknown data preparation '$RECIPE_PREPARE'" >&2; exit 2 ;;
  esac
}

# Runs the declared evaluations of WEIGHTS (EVAL_MODEL: --model, EVAL_RUN: device/workers/... options), then the
# report comparing them with the published rows.
_recipe_evaluate_and_report() {
  local i args smoke_args dirs=()
  for i in "${!RECIPE_EVAL_NAMES[@]}"; do
    eval "args=(${RECIPE_EVAL_ARGS[$i]})"
    smoke_args=()
    if [[ $SMOKE == 1 ]]; then
      eval "smoke_args=(${RECIPE_EVAL_SMOKE_ARGS[$i]})"
    fi
    if [[ $RECIPE_FAMILY == train ]]; then
      step "${RECIPE_EVAL_SAY[$i]}"
    else
      echo "== ${RECIPE_EVAL_SAY[$i]}"
    fi
    "$PYTHON" -m reproduce.evaluate "${EVAL_MODEL[@]}" --weights "$WEIGHTS" --dataset "$RECIPE_DATASET" \
      --root "$DATA_ROOT${RECIPE_DATA_DIR:+/$RECIPE_DATA_DIR}" --split "$RECIPE_SPLIT" --protocol "$RECIPE_PROTOCOL" \
      "${args[@]}" "${EVAL_RUN[@]}" --out "$OUT/${RECIPE_EVAL_NAMES[$i]}" "${EVAL_EXTRA[@]}" "${smoke_args[@]}"
    dirs+=("$OUT/${RECIPE_EVAL_NAMES[$i]}")
  done

  if [[ $RECIPE_FAMILY == train ]]; then
    step "report"
  fi
  "$PYTHON" -m reproduce._smoke report --out "$OUT/report.md" --title "${RECIPE_REPORT_TITLE:-$RECIPE_TITLE}$TITLE_NOTE" \
    "${dirs[@]}"
  if [[ $RECIPE_FAMILY == train ]]; then
    echo "== done: $OUT/report.md"
  fi
  cat "$OUT/report.md"
}

# ---- the recipes

recipe_train() {
  RECIPE_FAMILY=train
  RECIPE_OPTIONS+=(models-dir gpus amp)
  RECIPE_DEFAULT_OUT="runs/$RECIPE_CONFIG"
  _recipe_parse "$@"
  local config="$REPO/reproduce/configs/$RECIPE_CONFIG.yaml" data="$DATA_ROOT/$RECIPE_DATA_DIR" train_extra=()
  STEPS=$((4 + ${#RECIPE_EVAL_NAMES[@]}))  # init weights, check, train, evaluations, report
  if [[ -n "$RECIPE_PREPARE" ]]; then
    STEPS=$((STEPS + 1))
  fi
  EVAL_EXTRA=()
  TITLE_NOTE=""
  if [[ $AMP == 1 ]]; then
    train_extra+=(--amp --channels-last)
  fi

  if [[ $SMOKE == 1 ]]; then
    SMOKE_DIR="$OUT/smoke"
    echo "== smoke run: miniature data + random-weight official-format source weights in $SMOKE_DIR"
    "$PYTHON" -m reproduce.train --config "$config" --smoke "$SMOKE_DIR" --write-smoke-inputs "$SMOKE_DIR"
    train_extra+=(--smoke "$SMOKE_DIR")
    DATA_ROOT="$SMOKE_DIR/data"
    data="$DATA_ROOT/$RECIPE_DATA_DIR"
    GPUS=1
    _recipe_smoke_settings
  fi
  if [[ -n "$DEVICE" ]]; then
    train_extra+=(--device "$DEVICE")
  fi
  if [[ -n "$WORKERS" ]]; then
    train_extra+=(--workers "$WORKERS")
  fi
  EVAL_MODEL=()
  EVAL_RUN=(--device "${DEVICE:-auto}" --workers "${WORKERS:-2}")

  _recipe_convert_init
  if [[ $SMOKE == 0 ]]; then
    train_extra+=(--init-weights "$INIT")
  fi
  _recipe_prepare

  step "checking data and weights"
  "$PYTHON" -m reproduce.train --config "$config" --data-root "$data" "${train_extra[@]}" --check

  step "training (progress bar shows iterations and time left; rerun to resume)"
  local train_cmd=("$PYTHON" -m reproduce.train)
  if [[ "$GPUS" -gt 1 ]]; then
    train_cmd=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m reproduce.train)
  fi
  "${train_cmd[@]}" --config "$config" --data-root "$data" --out "$OUT/train" "${train_extra[@]}"
  WEIGHTS="$OUT/train/final.pth"

  _recipe_evaluate_and_report
}

recipe_official() {
  RECIPE_FAMILY=official
  RECIPE_OPTIONS+=(weights-dir)
  RECIPE_DEFAULT_OUT="results/${RECIPE_SCRIPT%.sh}"
  _recipe_parse "$@"
  DEVICE="${DEVICE:-auto}"
  WORKERS="${WORKERS:-2}"
  EVAL_EXTRA=()
  TITLE_NOTE=""
  if [[ $SMOKE == 1 ]]; then
    local what="caffemodel"
    [[ $RECIPE_FORMAT == tf ]] && what="TF checkpoint"
    echo "== smoke run: miniature VOC + random-weight official-format $what in $OUT/smoke"
    "$PYTHON" -m reproduce._smoke make "$RECIPE_KIND" --dir "$OUT/smoke"
    DATA_ROOT="$OUT/smoke/data"
    WEIGHTS_DIR="$OUT/smoke/weights"
    _recipe_smoke_settings
  fi
  EVAL_MODEL=(--model "$RECIPE_MODEL")
  EVAL_RUN=(--device "$DEVICE" --workers "$WORKERS")
  if _recipe_has_option crf-workers; then
    EVAL_RUN+=(--crf-workers "$CRF_WORKERS")
  fi
  if [[ $AMP == 1 ]]; then
    EVAL_RUN+=(--amp)
  fi

  echo "== checking inputs"
  local official  # the official weights, once reproduce._smoke has checked the inputs and found them
  official="$("$PYTHON" -m reproduce._smoke check "$RECIPE_KIND" --data-root "$DATA_ROOT" --weights-dir "$WEIGHTS_DIR")"

  WEIGHTS="$OUT/${RECIPE_MODEL}_$RECIPE_DATASET.pth"
  echo "== converting $official -> $WEIGHTS"
  recipe_convert "$RECIPE_FORMAT" "$RECIPE_RELEASE" "$official" "$WEIGHTS"

  _recipe_evaluate_and_report
}
