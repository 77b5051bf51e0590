"""The official releases the converters know by name.

Each record says where the user puts the downloaded file, which architecture
and how many classes it holds, where it was published, and its checksum where
one is known (none of the DeepLab v2 caffemodels has a published checksum; the
provenance record stores the sha256 we compute).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reference_models.preprocessing import CAFFE_DEEPLAB_V2, Preprocessing

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
