"""The one registry of official downloads: weight releases and datasets, each fact typed once.

An :class:`Archive` is one downloadable file: its URL, published size, checksum (``None`` where the
publisher gives none: never invented), format, and where it unpacks (under the models folder or
the data root) so that the converters and dataset readers find its files. A :class:`Release` is
one weight file inside an archive (the DeepLab v2 caffemodels share two zips) with its
architecture, classes and preprocessing contract; :class:`TFRelease` adds the TensorFlow
checkpoint details. A :class:`Dataset` names the archives that make it up, the folder its reader
expects, and the command that prepares derived files.

Readers: ``converters/caffe2torch.py`` and ``tf2torch.py`` (``--dataset`` lookups and the
missing-file messages), ``reproduce/download.py`` (``deeplab-download``), ``reproduce/_smoke.py``,
``hubconf.py``, the training configs (an init release by name through :func:`get`) and the
README tables (``python -m converters.releases_readme --readme README.md``).

Checksums: no DeepLab or TF model-zoo archive has a published checksum; the download command
records the sha256 of the first verified download in a user-level lock file and checks later
downloads against it. The dataset checksums are those torchvision's dataset code verifies
(md5 in ``torchvision/datasets/{voc,sbd}.py``; sha256 in its ``prototype/datasets/_builtin``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from reference_models.preprocessing import Preprocessing

MODELS_DIR = Path("data") / "models"  # --models-dir default: release archives unpack here
DATA_ROOT = Path("data")  # --data-root default: dataset archives unpack here

_TORCHVISION_MD5 = "torchvision/datasets (md5) and torchvision/prototype/datasets/_builtin (sha256)"


# ----------------------------------------------------------------------------- archives
@dataclass(frozen=True)
class Archive:
    """One downloadable file and where it unpacks.

    ``size``: exact byte count where known (checked before unpacking), else ``None``; ``size_text``:
    the size as the publisher states it. ``sha256`` / ``md5``: published checksums (``None`` where
    none is published). ``root``: ``"models"`` (``--models-dir``) or ``"data"`` (``--data-root``);
    ``unpack_to``: the folder under that root the archive is extracted into (``""`` = the root itself).
    ``expect``: paths (glob patterns allowed) under the root that exist after unpacking; the
    converters and dataset readers look there.
    """

    key: str
    file_name: str
    url: str
    format: Literal["zip", "tar", "tar.gz"]
    root: Literal["models", "data"]
    unpack_to: str
    expect: tuple[str, ...]
    size_text: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    checksum_source: str = ""
    page: str = ""

    @property
    def checksum(self) -> tuple[str, str] | None:
        """``("sha256", hex)`` or ``("md5", hex)``, the strongest published one, or ``None``."""
        if self.sha256:
            return ("sha256", self.sha256)
        if self.md5:
            return ("md5", self.md5)
        return None

    def destination(self, root: Path) -> Path:
        """The folder this archive is extracted into, below ``root`` (the models folder or data root)."""
        return root / self.unpack_to if self.unpack_to else root

    def unpack_command(self, root: Path) -> str:
        """The shell command that unpacks the downloaded file by hand."""
        dest = self.destination(root)
        mkdir = f"mkdir -p {dest} && "
        if self.format == "zip":
            return f"{mkdir}unzip -n {self.file_name} -d {dest}"
        flags = "xzf" if self.format == "tar.gz" else "xf"
        return f"{mkdir}tar {flags} {self.file_name} -C {dest}"


_CAFFE_HOST = "http://liangchiehchen.com/projects"
TF_MODELS_URL = "http://download.tensorflow.org/models"
_SLIM_PAGE = "https://github.com/tensorflow/models/tree/master/research/slim#pre-trained-models"
_ZOO_PAGE = "https://github.com/tensorflow/models/blob/master/research/deeplab/g3doc/model_zoo.md"


def _tf_archive(name: str, folder: str, has_folder: bool, expect: tuple[str, ...], size_text: str,
                page: str) -> Archive:
    """A TF model-zoo / slim tarball: ``<TF_MODELS_URL>/<name>.tar.gz``; no published checksum.

    ``has_folder``: the tarball holds one folder (extract into the models folder); otherwise it
    holds bare checkpoint files (extract into ``<models>/<folder>``).
    """
    return Archive(name, f"{name}.tar.gz", f"{TF_MODELS_URL}/{name}.tar.gz", "tar.gz", "models",
                   "" if has_folder else folder, expect, size_text, page=page)


ARCHIVES: dict[str, Archive] = {
    a.key: a
    for a in (
        # DeepLab v2 Caffe bundles: the caffemodels and prototxts at the top level of the zip
        # (kazuto1011/deeplab-pytorch scripts/setup_caffemodels.sh unzips and moves them from there).
        Archive("deeplab_aspp_resnet101", "prototxt_and_model.zip",
                f"{_CAFFE_HOST}/released/deeplab_aspp_resnet101/prototxt_and_model.zip", "zip", "models",
                "deeplabv2_resnet101",
                ("deeplabv2_resnet101/init.caffemodel", "deeplabv2_resnet101/train_iter_20000.caffemodel",
                 "deeplabv2_resnet101/train2_iter_20000.caffemodel"),
                "1GB+ (kazuto1011/deeplab-pytorch README)", page=f"{_CAFFE_HOST}/DeepLabv2_resnet.html"),
        Archive("deeplab_aspp_vgg16", "prototxt_and_model.zip",
                f"{_CAFFE_HOST}/released/deeplab_aspp_vgg16/prototxt_and_model.zip", "zip", "models",
                "deeplabv2_vgg16",
                ("deeplabv2_vgg16/train_iter_20000.caffemodel", "deeplabv2_vgg16/train2_iter_20000.caffemodel"),
                "unknown", page=f"{_CAFFE_HOST}/DeepLabv2_vgg.html"),
        # TF-slim ImageNet checkpoints: bare files. Sizes: not published in the slim README.
        _tf_archive("resnet_v1_50_2016_08_28", "resnet_v1_50_2016_08_28", False,
                    ("resnet_v1_50_2016_08_28/resnet_v1_50.ckpt",), "unknown", _SLIM_PAGE),
        _tf_archive("resnet_v1_101_2016_08_28", "resnet_v1_101_2016_08_28", False,
                    ("resnet_v1_101_2016_08_28/resnet_v1_101.ckpt",), "unknown", _SLIM_PAGE),
        _tf_archive("resnet_v2_50_2017_04_14", "resnet_v2_50_2017_04_14", False,
                    ("resnet_v2_50_2017_04_14/resnet_v2_50.ckpt.index",), "unknown", _SLIM_PAGE),
        _tf_archive("resnet_v2_101_2017_04_14", "resnet_v2_101_2017_04_14", False,
                    ("resnet_v2_101_2017_04_14/resnet_v2_101.ckpt.index",), "unknown", _SLIM_PAGE),
        _tf_archive("mobilenet_v1_1.0_224_2017_06_14", "mobilenet_v1_1.0_224_2017_06_14", False,
                    ("mobilenet_v1_1.0_224_2017_06_14/mobilenet_v1_1.0_224.ckpt.index",), "unknown", _SLIM_PAGE),
        # DeepLab model zoo: one folder per tarball (local_test.sh extracts deeplabv3_pascal_train_aug_2018_01_04
        # to deeplabv3_pascal_train_aug/); the other folder and prefix names are inferred from public usage,
        # hence the glob patterns. Sizes as the zoo table states them.
        _tf_archive("deeplabv3_pascal_train_aug_2018_01_04", "deeplabv3_pascal_train_aug", True,
                    ("deeplabv3_pascal_train_aug/model.ckpt.index",), "439 MB (model zoo)", _ZOO_PAGE),
        _tf_archive("deeplabv3_mnv2_pascal_train_aug_2018_01_29", "deeplabv3_mnv2_pascal_train_aug", True,
                    ("deeplabv3_mnv2_pascal_train_aug/*.index",), "23 MB (model zoo)", _ZOO_PAGE),
        _tf_archive("deeplabv3_xception_2018_01_04", "xception", True, ("xception/*.index",),
                    "447 MB (model zoo)", _ZOO_PAGE),
        _tf_archive("resnet_v1_101_2018_05_04", "resnet_v1_101", True, ("resnet_v1_101/*.index",),
                    "477 MB (model zoo)", _ZOO_PAGE),
        # Datasets (unpack under --data-root).
        Archive("VOCtrainval_11-May-2012", "VOCtrainval_11-May-2012.tar",
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", "tar", "data", "",
                ("VOCdevkit/VOC2012/JPEGImages", "VOCdevkit/VOC2012/SegmentationClass",
                 "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"),
                "2 GB", size=1999639040,
                sha256="e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
                md5="6cd6e144f989b92b3379bac3b3de84fd", checksum_source=_TORCHVISION_MD5,
                page="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"),
        Archive("benchmark", "benchmark.tgz",
                "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
                "tar.gz", "data", "",
                ("benchmark_RELEASE/dataset/cls", "benchmark_RELEASE/dataset/img",
                 "benchmark_RELEASE/dataset/train.txt", "benchmark_RELEASE/dataset/val.txt"),
                "1.4 GB", size=1419539633,
                sha256="6a5a2918d5c73ce032fdeba876574d150d9d04113ab87540a1304cbcc715be53",
                md5="82b4d87ceb2ed10f6038a1cba92111cb", checksum_source=_TORCHVISION_MD5,
                page="http://home.bharathh.info/pubs/codes/SBD/download.html"),
        # COCO-Stuff 10k v1.1: images/, annotations/, imageLists/ at the top level of the zip
        # (nightrome/cocostuff10k README: unzip ... -d dataset/). No published checksum.
        Archive("cocostuff-10k-v1.1", "cocostuff-10k-v1.1.zip",
                "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/cocostuff-10k-v1.1.zip", "zip",
                "data", "cocostuff-10k-v1.1",
                ("cocostuff-10k-v1.1/images", "cocostuff-10k-v1.1/annotations",
                 "cocostuff-10k-v1.1/imageLists/train.txt", "cocostuff-10k-v1.1/imageLists/test.txt"),
                "2.0 GB", page="https://github.com/nightrome/cocostuff10k"),
        # COCO-Stuff 164k (nightrome/cocostuff README "Setup"): the COCO 2017 image zips unpack train2017/ and
        # val2017/ into images/, the stuffthingmaps zip the same folder names into annotations/.
        Archive("train2017", "train2017.zip", "http://images.cocodataset.org/zips/train2017.zip", "zip", "data",
                "cocostuff/images", ("cocostuff/images/train2017",), "18 GB", size=19336861798,
                sha256="69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",
                checksum_source="torchvision/prototype/datasets/_builtin/coco.py",
                page="https://github.com/nightrome/cocostuff#downloads"),
        Archive("val2017", "val2017.zip", "http://images.cocodataset.org/zips/val2017.zip", "zip", "data",
                "cocostuff/images", ("cocostuff/images/val2017",), "1 GB", size=815585330,
                sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
                checksum_source="torchvision/prototype/datasets/_builtin/coco.py",
                page="https://github.com/nightrome/cocostuff#downloads"),
        Archive("stuffthingmaps_trainval2017", "stuffthingmaps_trainval2017.zip",
                "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip",
                "zip", "data", "cocostuff/annotations",
                ("cocostuff/annotations/train2017", "cocostuff/annotations/val2017"), "659 MB",
                page="https://github.com/nightrome/cocostuff#downloads"),
    )
}


# ----------------------------------------------------------------------------- weight releases
def _contract(name: str) -> Preprocessing:
    """A preprocessing contract by name; imported on use, so reading the registry does not load torch."""
    from reference_models import preprocessing

    return getattr(preprocessing, name)


@dataclass(frozen=True)
class Release:
    """One weight file inside an :class:`Archive` and what it contains."""

    name: str
    file_name: str
    folder: str  # under the models folder (data/models/)
    arch: str  # a reference_models registry name
    num_classes: int
    archive: Archive
    description: str
    preprocessing_name: str  # a contract of reference_models.preprocessing (imported when asked for)
    sha256: str | None = None  # of the weight file itself, where published (none is)

    @property
    def preprocessing(self) -> Preprocessing:
        return _contract(self.preprocessing_name)

    @property
    def url(self) -> str:
        return self.archive.url

    @property
    def page(self) -> str:
        return self.archive.page

    @property
    def kind(self) -> str:
        return "model"

    @property
    def default_path(self) -> Path:
        return self.source_path(MODELS_DIR)

    @property
    def default_output(self) -> Path:
        return self.converted_path(MODELS_DIR)

    def source_path(self, models_dir: Path) -> Path:
        """Where the official file is after ``deeplab-download`` (the converter's default input)."""
        return Path(models_dir) / self.folder / self.file_name

    def converted_path(self, models_dir: Path) -> Path:
        """Where the converter writes the PyTorch weights by default."""
        return Path(models_dir) / self.folder / f"{self.arch}_{self.name}.pth"

    def convert_command(self, models_dir: Path = MODELS_DIR) -> str:
        tool = "caffe2torch" if isinstance(self, CaffeRelease) else "tf2torch"
        if Path(models_dir) == MODELS_DIR:
            return f"python -m converters.{tool} --dataset {self.name}"
        flag = "--caffemodel" if isinstance(self, CaffeRelease) else "--checkpoint"
        return (f"python -m converters.{tool} --dataset {self.name} {flag} {self.source_path(models_dir)} "
                f"--out {self.converted_path(models_dir)}")

    def how_to_get(self, models_dir: Path = MODELS_DIR) -> str:
        """The commands that produce :meth:`converted_path` (one line)."""
        flag = "" if Path(models_dir) == MODELS_DIR else f" --models-dir {models_dir}"
        return f"python -m reproduce.download {self.name}{flag} && {self.convert_command(models_dir)}"

    def missing_message(self, flag: str = "--caffemodel") -> str:
        """What to do when the file is not at its default location (one line)."""
        return (f"file not found. Release '{self.name}' ({self.description}) is '{self.file_name}' in "
                f"{self.url} (see {self.page}); run 'python -m reproduce.download {self.name}', or download and "
                f"unzip it and put '{self.file_name}' here, or pass {flag} PATH")


@dataclass(frozen=True)
class CaffeRelease(Release):
    """A DeepLab v2 caffemodel (``converters/caffe2torch.py``)."""


CAFFE_RELEASES: dict[str, CaffeRelease] = {
    r.name: r
    for r in (
        CaffeRelease("coco_init", "init.caffemodel", "deeplabv2_resnet101", "deeplabv1_resnet101", 91,
                     ARCHIVES["deeplab_aspp_resnet101"],
                     "DeepLab v2 ResNet-101 pretrained on MS-COCO: the initialisation for VOC training",
                     "CAFFE_DEEPLAB_V2"),
        CaffeRelease("voc12", "train_iter_20000.caffemodel", "deeplabv2_resnet101", "deeplabv2_resnet101_msc", 21,
                     ARCHIVES["deeplab_aspp_resnet101"],
                     "DeepLab v2 ResNet-101 MSC trained on VOC12 train_aug: the model to reproduce val numbers with",
                     "CAFFE_DEEPLAB_V2"),
        CaffeRelease("voc12_trainval", "train2_iter_20000.caffemodel", "deeplabv2_resnet101",
                     "deeplabv2_resnet101_msc", 21, ARCHIVES["deeplab_aspp_resnet101"],
                     "DeepLab v2 ResNet-101 MSC fine-tuned on VOC12 trainval_aug (test-server model; it has seen val)",
                     "CAFFE_DEEPLAB_V2"),
        CaffeRelease("vgg16_voc12", "train_iter_20000.caffemodel", "deeplabv2_vgg16", "deeplabv2_vgg16", 21,
                     ARCHIVES["deeplab_aspp_vgg16"], "DeepLab v2 VGG-16 ASPP-L trained on VOC12 train_aug",
                     "CAFFE_DEEPLAB_V2"),
        CaffeRelease("vgg16_voc12_trainval", "train2_iter_20000.caffemodel", "deeplabv2_vgg16", "deeplabv2_vgg16",
                     21, ARCHIVES["deeplab_aspp_vgg16"],
                     "DeepLab v2 VGG-16 ASPP-L fine-tuned on VOC12 trainval_aug (test-server model)",
                     "CAFFE_DEEPLAB_V2"),
    )
}


# ----------------------------------------------------------------------------- TensorFlow checkpoints
MANIFESTS_DIR = Path(__file__).resolve().parent / "manifests"


@dataclass(frozen=True)
class TFRelease(Release):
    """A TensorFlow checkpoint release. ``file_name`` is the checkpoint prefix inside ``folder``.

    ``kind``: ``"backbone"`` (ImageNet trunk: ``build_backbone(arch, output_stride=...)``; the
    checkpoint's classifier, of ``num_classes`` ImageNet classes, is dropped) or ``"model"``
    (``build_model(arch, num_classes=num_classes, output_stride=...)``).
    ``deeplab_preprocessing``: what DeepLab-TF applies when it fine-tunes from these weights, when
    that differs from ``preprocessing`` (how they were trained).
    """

    kind: str = "backbone"  # type: ignore[assignment]  # a field here, a property on Release
    checkpoint_format: str = "V2"  # "V1": one TensorSliceWriter file; "V2": .index + .data-*
    output_stride: int = 16  # the converted weights load at any valid stride; this is the recorded default
    deeplab_preprocessing_name: str | None = None
    notes: str = ""

    @property
    def deeplab_preprocessing(self) -> Preprocessing | None:
        return _contract(self.deeplab_preprocessing_name) if self.deeplab_preprocessing_name else None

    @property
    def tarball(self) -> str:
        return self.archive.file_name

    @property
    def tarball_has_folder(self) -> bool:
        return not self.archive.unpack_to

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
                f"({self.checkpoint_format}, {files}) in {self.url} (see {self.page}); run "
                f"'python -m reproduce.download {self.name}', or download it and run '{self.extract_command()}', "
                f"or pass {flag} PREFIX")


def _tf(name: str, file_name: str, arch: str, num_classes: int, description: str, preprocessing: str,
        **kwargs) -> TFRelease:
    archive = ARCHIVES[name]
    folder = archive.unpack_to or archive.expect[0].split("/", 1)[0]
    return TFRelease(name, file_name, folder, arch, num_classes, archive, description, preprocessing, **kwargs)


TF_RELEASES: dict[str, TFRelease] = {
    r.name: r
    for r in (
        _tf("resnet_v1_50_2016_08_28", "resnet_v1_50.ckpt", "resnet_v1_50", 1000,
            "TF-slim ResNet-50 v1 ImageNet (converted by Google from the MSRA Caffe model), top-1 75.2",
            "TF_SLIM_VGG", checkpoint_format="V1", deeplab_preprocessing_name="DEEPLAB_TF_RESNET_V1_MEAN"),
        _tf("resnet_v1_101_2016_08_28", "resnet_v1_101.ckpt", "resnet_v1_101", 1000,
            "TF-slim ResNet-101 v1 ImageNet (converted by Google from the MSRA Caffe model), top-1 76.4",
            "TF_SLIM_VGG", checkpoint_format="V1", deeplab_preprocessing_name="DEEPLAB_TF_RESNET_V1_MEAN"),
        _tf("resnet_v2_50_2017_04_14", "resnet_v2_50.ckpt", "resnet_v2_50", 1001,
            "TF-slim ResNet-50 v2 ImageNet (1001 classes, background at 0), top-1 75.6", "TF_SLIM_INCEPTION"),
        _tf("resnet_v2_101_2017_04_14", "resnet_v2_101.ckpt", "resnet_v2_101", 1001,
            "TF-slim ResNet-101 v2 ImageNet (1001 classes, background at 0), top-1 77.0", "TF_SLIM_INCEPTION"),
        _tf("mobilenet_v1_1.0_224_2017_06_14", "mobilenet_v1_1.0_224.ckpt", "mobilenet_v1", 1001,
            "TF-slim MobileNet-v1 1.0 224 ImageNet (1001 classes, background at 0), top-1 70.7",
            "TF_SLIM_INCEPTION", notes="prefix 'mobilenet_v1_1.0_224.ckpt' inferred from public usage"),
        _tf("deeplabv3_pascal_train_aug_2018_01_04", "model.ckpt", "deeplabv3plus_xception65", 21,
            "DeepLab v3+ Xception-65 (zoo xception65_coco_voc_trainaug), 82.20% VOC12 val at OS 16",
            "DEEPLAB_TF_UNIT_RANGE", kind="model"),
        _tf("deeplabv3_mnv2_pascal_train_aug_2018_01_29", "model.ckpt-30000", "deeplabv3_mobilenetv2", 21,
            "DeepLab v3 MobileNet-v2 (zoo mobilenetv2_coco_voc_trainaug; image pooling + aspp0, no decoder), "
            "75.32% VOC12 val at OS 16",
            "DEEPLAB_TF_UNIT_RANGE", kind="model", notes="prefix 'model.ckpt-30000' inferred from public usage"),
        _tf("deeplabv3_xception_2018_01_04", "model.ckpt", "xception_65", 1001,
            "DeepLab's Xception-65 ImageNet checkpoint (the initialisation for DeepLab v3+ training)",
            "DEEPLAB_TF_UNIT_RANGE", notes="folder 'xception/' inferred from public usage"),
        _tf("resnet_v1_101_2018_05_04", "model.ckpt", "resnet_v1_101_beta", 1001,
            "DeepLab's resnet_v1_101_beta ImageNet checkpoint (3x3 root convs; use multi_grid (1, 2, 4))",
            "DEEPLAB_TF_UNIT_RANGE", notes="folder 'resnet_v1_101/' and a 1001-class classifier inferred from "
            "public usage"),
    )
}

RELEASES: dict[str, Release] = {**CAFFE_RELEASES, **TF_RELEASES}


# ----------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Dataset:
    """A dataset the readers in ``reproduce/datasets`` read, and how to get it under ``--data-root``.

    ``folder``: what to pass as the reader's root (``--root``), relative to the data root.
    ``archives``: what ``deeplab-download`` fetches; empty when the licence allows no direct link
    (then ``manual`` says how to get it). ``prepare``: the command that builds derived files
    (``{data_root}`` is substituted). ``tree``: the on-disk layout, for the README.
    """

    name: str
    title: str
    folder: str
    page: str
    tree: str
    archives: tuple[Archive, ...] = ()
    prepare: str | None = None
    manual: str | None = None
    notes: str = ""
    readers: tuple[str, ...] = field(default=())  # reproduce.evaluate --dataset names it serves
    manual_expect: tuple[str, ...] = ()  # for a manual dataset: paths under the data root once it is in place

    @property
    def expect(self) -> tuple[str, ...]:
        """Paths (globs allowed) under the data root that exist once the dataset is in place."""
        return tuple(p for a in self.archives for p in a.expect) or self.manual_expect

    def prepare_command(self, data_root: Path = DATA_ROOT) -> str | None:
        return self.prepare.format(data_root=data_root) if self.prepare else None

    def how_to_get(self, data_root: Path = DATA_ROOT) -> str:
        """One line: the download (or the manual steps) and the prepare command, for ``data_root``."""
        flag = "" if Path(data_root) == DATA_ROOT else f" --data-root {data_root}"
        get = (f"python -m reproduce.download {self.name}{flag}" if self.archives
               else self.manual.format(data_root=data_root))
        prepare = self.prepare_command(data_root)
        return f"{get}; then {prepare}" if prepare else get


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("voc2012", "PASCAL VOC 2012 trainval (segmentation: 1,464 train, 1,449 val)", "VOCdevkit",
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
                "VOCdevkit/VOC2012/\n"
                "  JPEGImages/<id>.jpg\n"
                "  SegmentationClass/<id>.png          palette PNG, values = class ids, 255 = void\n"
                "  ImageSets/Segmentation/{train,val,trainval}.txt\n"
                "  SegmentationClassAug/<id>.png       written by prepare voc_aug\n"
                "  ImageSets/SegmentationAug/train_aug.txt",
                (ARCHIVES["VOCtrainval_11-May-2012"],), readers=("voc12",)),
        Dataset("sbd", "SBD (Hariharan et al.): the extra VOC annotations behind train_aug (10,582 images)",
                "benchmark_RELEASE", "http://home.bharathh.info/pubs/codes/SBD/download.html",
                "benchmark_RELEASE/dataset/\n"
                "  img/<id>.jpg\n"
                "  cls/<id>.mat                        MATLAB struct GTcls.Segmentation, 0..20\n"
                "  {train,val}.txt",
                (ARCHIVES["benchmark"],),
                prepare="python -m reproduce.prepare voc_aug --voc-root {data_root}/VOCdevkit "
                        "--sbd-root {data_root}/benchmark_RELEASE",
                notes="needs voc2012 too; prepare writes SegmentationClassAug and train_aug.txt into VOC2012/",
                readers=("sbd",)),
        Dataset("cocostuff10k", "COCO-Stuff 10k v1.1 (9,000 train, 1,000 test; 182 classes)", "cocostuff-10k-v1.1",
                "https://github.com/nightrome/cocostuff10k",
                "cocostuff-10k-v1.1/\n"
                "  images/<id>.jpg\n"
                "  annotations/<id>.mat                variable S: 0 = unlabeled, 1..182 = classes\n"
                "  imageLists/{train,test,all}.txt",
                (ARCHIVES["cocostuff-10k-v1.1"],), readers=("cocostuff10k",)),
        Dataset("cocostuff164k", "COCO-Stuff 164k (COCO 2017: 118k train, 5k val; 182 classes)", "cocostuff",
                "https://github.com/nightrome/cocostuff",
                "cocostuff/\n"
                "  images/{train2017,val2017}/<id>.jpg\n"
                "  annotations/{train2017,val2017}/<id>.png   0..181 = classes, 255 = unlabeled",
                (ARCHIVES["train2017"], ARCHIVES["val2017"], ARCHIVES["stuffthingmaps_trainval2017"]),
                readers=("cocostuff164k",)),
        Dataset("deepfashion2", "DeepFashion2 (13 clothing categories + background)", "deepfashion2",
                "https://github.com/switchablenorms/DeepFashion2",
                "deepfashion2/\n"
                "  {train,validation}/image/<id>.jpg\n"
                "  {train,validation}/annos/<id>.json  polygons per item\n"
                "  {train,validation}/masks/<id>.png   written by prepare deepfashion2",
                prepare="python -m reproduce.prepare deepfashion2 --data-root {data_root}/deepfashion2",
                manual="its licence allows no direct link: fill in the form linked from "
                       "https://github.com/switchablenorms/DeepFashion2#download-the-data to get the password of "
                       "the zips, download train.zip and validation.zip from the Google Drive folder named there, "
                       "and unzip them (unzip -P PASSWORD) into {data_root}/deepfashion2/",
                readers=("deepfashion2",),
                manual_expect=("deepfashion2/train/annos", "deepfashion2/validation/annos")),
    )
}


# ----------------------------------------------------------------------------- lookups
def get(name: str) -> Release:
    """The weight release ``name`` (a Caffe or TF release); ``KeyError`` with the known names."""
    try:
        return RELEASES[name]
    except KeyError:
        raise KeyError(f"unknown release '{name}'; known: {', '.join(RELEASES)}") from None


def get_dataset(name: str) -> Dataset:
    """The dataset ``name``; ``KeyError`` with the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}") from None


def converted_path(name: str, models_dir: str | Path = MODELS_DIR) -> Path:
    """Where ``python converters/<tool>.py --dataset NAME`` writes the weights of release ``name``."""
    return get(name).converted_path(Path(models_dir))


def releases_in(archive: Archive) -> list[Release]:
    """The weight releases an archive holds."""
    return [r for r in RELEASES.values() if r.archive is archive]
