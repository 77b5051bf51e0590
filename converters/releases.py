"""The official releases the converters know by name.

Each record says where the user puts the downloaded file, which architecture
and how many classes it holds, where it was published, and its checksum where
one is known (none of the DeepLab v2 caffemodels has a published checksum; the
provenance record stores the sha256 we compute).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reference_models.preprocessing import (
    CAFFE_DEEPLAB_V2,
    DEEPLAB_TF_RESNET_V1_MEAN,
    DEEPLAB_TF_UNIT_RANGE,
    TF_SLIM_INCEPTION,
    TF_SLIM_VGG,
    Preprocessing,
)

MODELS_DIR = Path("data") / "models"

_RESNET_ZIP = "http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/prototxt_and_model.zip"
_VGG_ZIP = "http://liangchiehchen.com/projects/released/deeplab_aspp_vgg16/prototxt_and_model.zip"


@dataclass(frozen=True)
class Release:
    """One downloadable weight file and what it contains."""

    name: str
    file_name: str
    folder: str  # under data/models/
    arch: str  # a reference_models registry name
    num_classes: int
    url: str
    page: str
    description: str
    preprocessing: Preprocessing
    sha256: str | None = None  # verified when known

    @property
    def default_path(self) -> Path:
        return MODELS_DIR / self.folder / self.file_name

    @property
    def default_output(self) -> Path:
        return MODELS_DIR / self.folder / f"{self.arch}_{self.name}.pth"

    def missing_message(self, flag: str = "--caffemodel") -> str:
        """What to do when the file is not at its default location (one line)."""
        return (f"file not found. Release '{self.name}' ({self.description}) is '{self.file_name}' in "
                f"{self.url} (see {self.page}); download and unzip it and put '{self.file_name}' here, "
                f"or pass {flag} PATH")


CAFFE_RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("coco_init", "init.caffemodel", "deeplabv2_resnet101", "deeplabv1_resnet101", 91, _RESNET_ZIP,
                "http://liangchiehchen.com/projects/DeepLabv2_resnet.html",
                "DeepLab v2 ResNet-101 pretrained on MS-COCO: the initialisation for VOC training",
                CAFFE_DEEPLAB_V2),
        Release("voc12", "train_iter_20000.caffemodel", "deeplabv2_resnet101", "deeplabv2_resnet101_msc", 21,
                _RESNET_ZIP, "http://liangchiehchen.com/projects/DeepLabv2_resnet.html",
                "DeepLab v2 ResNet-101 MSC trained on VOC12 train_aug: the model to reproduce val numbers with",
                CAFFE_DEEPLAB_V2),
        Release("voc12_trainval", "train2_iter_20000.caffemodel", "deeplabv2_resnet101", "deeplabv2_resnet101_msc",
                21, _RESNET_ZIP, "http://liangchiehchen.com/projects/DeepLabv2_resnet.html",
                "DeepLab v2 ResNet-101 MSC fine-tuned on VOC12 trainval_aug (test-server model; it has seen val)",
                CAFFE_DEEPLAB_V2),
        Release("vgg16_voc12", "train_iter_20000.caffemodel", "deeplabv2_vgg16", "deeplabv2_vgg16", 21, _VGG_ZIP,
                "http://liangchiehchen.com/projects/DeepLabv2_vgg.html",
                "DeepLab v2 VGG-16 ASPP-L trained on VOC12 train_aug", CAFFE_DEEPLAB_V2),
        Release("vgg16_voc12_trainval", "train2_iter_20000.caffemodel", "deeplabv2_vgg16", "deeplabv2_vgg16", 21,
                _VGG_ZIP, "http://liangchiehchen.com/projects/DeepLabv2_vgg.html",
                "DeepLab v2 VGG-16 ASPP-L fine-tuned on VOC12 trainval_aug (test-server model)", CAFFE_DEEPLAB_V2),
    )
}


# ----------------------------------------------------------------------------- TensorFlow checkpoints
# Official tarballs: http://download.tensorflow.org/models/<name>.tar.gz (slim README, DeepLab model_zoo.md).
# The slim tarballs hold bare checkpoint files; the DeepLab ones one folder (local_test.sh extracts
# deeplabv3_pascal_train_aug_2018_01_04 to deeplabv3_pascal_train_aug/). Folder and prefix names of the
# other DeepLab tarballs are taken from how public scripts use them (inferred, not from an official
# listing); tf2torch.py also accepts the release folder holding exactly one ``*.index`` file.

TF_MODELS_URL = "http://download.tensorflow.org/models"
MANIFESTS_DIR = Path(__file__).resolve().parent / "manifests"
_SLIM_PAGE = "https://github.com/tensorflow/models/tree/master/research/slim#pre-trained-models"
_ZOO_PAGE = "https://github.com/tensorflow/models/blob/master/research/deeplab/g3doc/model_zoo.md"


@dataclass(frozen=True)
class TFRelease(Release):
    """A TensorFlow checkpoint release. ``file_name`` is the checkpoint prefix inside ``folder``.

    ``kind``: ``"backbone"`` (ImageNet trunk: ``build_backbone(arch, output_stride=...)``; the
    checkpoint's classifier, of ``num_classes`` ImageNet classes, is dropped) or ``"model"``
    (``build_model(arch, num_classes=num_classes, output_stride=...)``).
    ``tarball_has_folder``: the tarball unpacks into ``folder`` (extract into ``data/models``);
    otherwise it holds bare files (extract into ``data/models/<folder>``).
    ``deeplab_preprocessing``: what DeepLab-TF applies when it fine-tunes from these weights, when
    that differs from ``preprocessing`` (how they were trained).
    """

    kind: str = "backbone"
    checkpoint_format: str = "V2"  # "V1": one TensorSliceWriter file; "V2": .index + .data-*
    tarball_has_folder: bool = True
    output_stride: int = 16  # the converted weights load at any valid stride; this is the recorded default
    deeplab_preprocessing: Preprocessing | None = None
    notes: str = ""

    @property
    def tarball(self) -> str:
        return f"{self.name}.tar.gz"

    @property
    def manifest_path(self) -> Path:
        return MANIFESTS_DIR / f"{self.name}.json"

    def extract_command(self) -> str:
        target = MODELS_DIR if self.tarball_has_folder else MODELS_DIR / self.folder
        mkdir = "" if self.tarball_has_folder else f"mkdir -p {target} && "
        return f"{mkdir}tar xzf {self.tarball} -C {target}"

    def missing_message(self, flag: str = "--checkpoint") -> str:
        files = ("one file" if self.checkpoint_format == "V1"
                 else "files '.index' and '.data-00000-of-00001'")
        return (f"checkpoint not found. Release '{self.name}' ({self.description}) is '{self.file_name}' "
                f"({self.checkpoint_format}, {files}) in {self.url} (see {self.page}); download it and run "
                f"'{self.extract_command()}', or pass {flag} PREFIX")


def _tf(name: str, file_name: str, folder: str, arch: str, num_classes: int, page: str, description: str,
        preprocessing: Preprocessing, **kwargs) -> TFRelease:
    return TFRelease(name, file_name, folder, arch, num_classes, f"{TF_MODELS_URL}/{name}.tar.gz", page,
                     description, preprocessing, **kwargs)


TF_RELEASES: dict[str, TFRelease] = {
    r.name: r
    for r in (
        _tf("resnet_v1_50_2016_08_28", "resnet_v1_50.ckpt", "resnet_v1_50_2016_08_28", "resnet_v1_50", 1000,
            _SLIM_PAGE, "TF-slim ResNet-50 v1 ImageNet (converted by Google from the MSRA Caffe model), top-1 75.2",
            TF_SLIM_VGG, checkpoint_format="V1", tarball_has_folder=False,
            deeplab_preprocessing=DEEPLAB_TF_RESNET_V1_MEAN),
        _tf("resnet_v1_101_2016_08_28", "resnet_v1_101.ckpt", "resnet_v1_101_2016_08_28", "resnet_v1_101", 1000,
            _SLIM_PAGE, "TF-slim ResNet-101 v1 ImageNet (converted by Google from the MSRA Caffe model), top-1 76.4",
            TF_SLIM_VGG, checkpoint_format="V1", tarball_has_folder=False,
            deeplab_preprocessing=DEEPLAB_TF_RESNET_V1_MEAN),
        _tf("resnet_v2_50_2017_04_14", "resnet_v2_50.ckpt", "resnet_v2_50_2017_04_14", "resnet_v2_50", 1001,
            _SLIM_PAGE, "TF-slim ResNet-50 v2 ImageNet (1001 classes, background at 0), top-1 75.6",
            TF_SLIM_INCEPTION, tarball_has_folder=False),
        _tf("resnet_v2_101_2017_04_14", "resnet_v2_101.ckpt", "resnet_v2_101_2017_04_14", "resnet_v2_101", 1001,
            _SLIM_PAGE, "TF-slim ResNet-101 v2 ImageNet (1001 classes, background at 0), top-1 77.0",
            TF_SLIM_INCEPTION, tarball_has_folder=False),
        _tf("deeplabv3_pascal_train_aug_2018_01_04", "model.ckpt", "deeplabv3_pascal_train_aug",
            "deeplabv3plus_xception65", 21, _ZOO_PAGE,
            "DeepLab v3+ Xception-65 (zoo xception65_coco_voc_trainaug), 82.20% VOC12 val at OS 16",
            DEEPLAB_TF_UNIT_RANGE, kind="model"),
        _tf("deeplabv3_mnv2_pascal_train_aug_2018_01_29", "model.ckpt-30000", "deeplabv3_mnv2_pascal_train_aug",
            "deeplabv3_mobilenetv2", 21, _ZOO_PAGE,
            "DeepLab v3 MobileNet-v2 (zoo mobilenetv2_coco_voc_trainaug; image pooling + aspp0, no decoder), "
            "75.32% VOC12 val at OS 16",
            DEEPLAB_TF_UNIT_RANGE, kind="model", notes="prefix 'model.ckpt-30000' inferred from public usage"),
        _tf("deeplabv3_xception_2018_01_04", "model.ckpt", "xception", "xception_65", 1001, _ZOO_PAGE,
            "DeepLab's Xception-65 ImageNet checkpoint (the initialisation for DeepLab v3+ training)",
            DEEPLAB_TF_UNIT_RANGE, notes="folder 'xception/' inferred from public usage"),
        _tf("resnet_v1_101_2018_05_04", "model.ckpt", "resnet_v1_101", "resnet_v1_101_beta", 1001, _ZOO_PAGE,
            "DeepLab's resnet_v1_101_beta ImageNet checkpoint (3x3 root convs; use multi_grid (1, 2, 4))",
            DEEPLAB_TF_UNIT_RANGE, notes="folder 'resnet_v1_101/' and a 1001-class classifier inferred from "
            "public usage"),
    )
}
