"""The release and dataset registry: consistent with the model registry and the dataset readers, and the
README tables generated from it are current."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from converters import releases
from converters.releases import ARCHIVES, CAFFE_RELEASES, DATASETS, RELEASES
from converters.releases_readme import GENERATOR, sync_readme
from reference_models import list_backbones, list_models
from reproduce import download, synthetic
from reproduce.datasets import build_dataset

REPO = Path(__file__).resolve().parent.parent


def test_readme_tables_are_current():
    assert sync_readme(REPO / "README.md", check=True), f"README is stale: run {GENERATOR}"


def test_stale_readme_is_detected(tmp_path):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(text.replace(CAFFE_RELEASES["voc12"].url, "http://example.invalid/x.zip", 1), encoding="utf-8")
    assert not sync_readme(stale, check=True)
    assert sync_readme(stale) is False and sync_readme(stale, check=True)


def test_every_release_names_a_registered_architecture_and_an_archive_that_provides_it():
    for r in RELEASES.values():
        assert r.arch in (list_models() if r.kind == "model" else list_backbones()), r.name
        assert r.archive is ARCHIVES[r.archive.key]
        source = r.source_path(Path("M"))
        wanted = [str(source), f"{source}.index"]  # V1 file, or V2 prefix
        patterns = [str(Path("M") / p) for p in r.archive.expect]
        assert any(Path(w).match(p) for w in wanted for p in patterns), (r.name, wanted, patterns)
        assert r.converted_path(Path("M")).parent == source.parent
    assert releases.get("voc12") is CAFFE_RELEASES["voc12"]
    with pytest.raises(KeyError, match="known: coco_init"):
        releases.get("voc13")


def test_checksums_are_well_formed_and_never_invented():
    for a in ARCHIVES.values():
        assert a.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", a.sha256), a.key
        assert a.md5 is None or re.fullmatch(r"[0-9a-f]{32}", a.md5), a.key
        assert bool(a.checksum) == bool(a.checksum_source), f"{a.key}: a checksum needs its source, and only then"
        assert a.url.startswith("http") and a.url.endswith(a.file_name) and a.size_text
    # Nobody publishes checksums for the DeepLab and TF-zoo archives: they must stay unset.
    for r in RELEASES.values():
        assert r.archive.checksum is None and r.archive.size is None, r.name


def _zip(base: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(base.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(base).as_posix())
    return buf.getvalue()


def _tar(base: Path, top: str, mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        tf.add(base / top, arcname=top)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["voc2012", "sbd", "cocostuff10k", "cocostuff164k"])
def test_dataset_archives_unpack_where_the_readers_look(name, tmp_path, monkeypatch):
    """Archives in the published layouts (built from the synthetic datasets), unpacked by the download code
    at the registry's location, are read by the registry's reader at the registry's root."""
    monkeypatch.setenv(download.LOCK_ENV, str(tmp_path / "lock.json"))
    src = tmp_path / "src"
    bodies: dict[str, bytes] = {}
    split = None
    if name == "voc2012":
        synthetic.write_voc(src, train_ids=["2007_000032"], val_ids=["2007_000033"], sizes=(40, 60))
        bodies["VOCtrainval_11-May-2012"] = _tar(src, "VOCdevkit", "w")
        split = "val"
    elif name == "sbd":
        synthetic.write_sbd(src, train_ids=["2008_000002"], val_ids=["2008_000003"], sizes=(40, 60))
        bodies["benchmark"] = _tar(src, "benchmark_RELEASE", "w:gz")
        split = "train"
    elif name == "cocostuff10k":
        base = synthetic.write_cocostuff10k(src, n_train=2, n_test=1, sizes=(40, 60))
        bodies["cocostuff-10k-v1.1"] = _zip(base)
        split = "test"
    else:
        base = synthetic.write_cocostuff164k(src, n_train=2, n_val=1, sizes=(40, 60))
        bodies["val2017"] = _zip_only(base / "images", "val2017")
        bodies["train2017"] = _zip_only(base / "images", "train2017")
        bodies["stuffthingmaps_trainval2017"] = _zip(base / "annotations")
        split = "val2017"
    data_root = tmp_path / "data"
    dataset = DATASETS[name]
    assert sorted(a.key for a in dataset.archives) == sorted(bodies)
    for archive in dataset.archives:
        path = data_root / "downloads" / archive.key / archive.file_name
        path.parent.mkdir(parents=True)
        path.write_bytes(bodies[archive.key])  # as if fetched; the published checksums do not apply to these
        test_archive = replace(archive, size=None, sha256=None, md5=None, checksum_source="")
        item = download.Item(test_archive, data_root, archive.url, (name,))
        download.process(item, lock={}, retries=0, timeout=1, quiet=True, say=lambda _: None)
    assert download.present(data_root, dataset.expect)
    ds = build_dataset(dataset.readers[0], root=data_root / dataset.folder, split=split)
    image, label = ds[0][:2]
    assert image.shape[:2] == label.shape[:2]


def _zip_only(base: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((base / top).rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(base).as_posix())
    return buf.getvalue()


def _code_files() -> list[Path]:
    """Code, configs and scripts (the README is generated; tests state facts to check them)."""
    files = [REPO / "hubconf.py", REPO / "pyproject.toml"]
    for folder in ("converters", "reference_models", "reproduce", "benchmarks", "tools"):
        files += [p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".sh", ".yaml", ".json", ".toml")]
    return [p for p in files if p.is_file()]


def test_each_download_url_is_typed_in_the_registry_only():
    texts = {p: p.read_text(encoding="utf-8", errors="replace") for p in _code_files()}
    hosts = {a.url.split("/")[2] for a in ARCHIVES.values()}
    for needle in sorted({a.url for a in ARCHIVES.values()} | hosts):
        where = sorted(str(p.relative_to(REPO)) for p, t in texts.items() if needle in t)
        assert set(where) <= {"converters/releases.py"}, f"{needle} is typed in {where}"
    for host in hosts:
        assert host in texts[REPO / "converters" / "releases.py"]


def test_dataset_how_to_get_names_the_download_and_prepare_commands():
    assert DATASETS["sbd"].how_to_get(Path("/d")) == ("python -m reproduce.download sbd --data-root /d; then python -m "
                                                      "reproduce.prepare voc_aug --voc-root /d/VOCdevkit --sbd-root "
                                                      "/d/benchmark_RELEASE")
    assert DATASETS["voc2012"].how_to_get() == "python -m reproduce.download voc2012"
    assert "licence" in DATASETS["deepfashion2"].how_to_get() and "prepare deepfashion2" in DATASETS[
        "deepfashion2"].how_to_get()
