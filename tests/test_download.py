"""``deeplab-download`` against an HTTP server on 127.0.0.1 that the tests start and stop.

The server serves generated archives in the releases' real layouts (the DeepLab v2 zip with its
caffemodels at the top level, the DeepLab-TF tarball with its checkpoint folder, a slim tarball
with bare files) and can cut a transfer mid-way, ignore ``Range`` or answer 404. No test touches
an outside address: every URL goes through ``--mirror http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from converters.releases import ARCHIVES, CAFFE_RELEASES, DATASETS, TF_RELEASES, Archive
from reproduce import download, unpack
from reproduce.download import DownloadError, Item
from reproduce.unpack import UnpackError


# ----------------------------------------------------------------------------- the local server
class Server:
    """Serves ``files`` (URL path -> bytes) with Range support; behaviour switches for the tests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before the connection is dropped (once)
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                cut = server.cut_after.pop(self.path, None)
                if cut is not None:
                    self.wfile.write(body[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def serve(self, archive: Archive, body: bytes) -> None:
        self.files[urlsplit(archive.url).path] = body


@pytest.fixture
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


@pytest.fixture(autouse=True)
def lock_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "user-config" / "downloads.lock.json"
    monkeypatch.setenv(download.LOCK_ENV, str(path))
    return path


# ----------------------------------------------------------------------------- archives in the real layouts
def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w:gz", links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, (kind, target) in (links or {}).items():  # links first: later members may go through them
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def caffe_resnet_zip() -> bytes:
    """prototxt_and_model.zip: the three caffemodels and the prototxts at the top level."""
    names = {r.file_name for r in CAFFE_RELEASES.values() if r.archive.key == "deeplab_aspp_resnet101"}
    members = {n: hashlib.sha256(n.encode()).digest() * 4096 for n in sorted(names)}  # 128 KiB each
    members.update({"test.prototxt": b'name: "deeplab"\n', "train.prototxt": b'name: "deeplab"\n'})
    return make_zip(members)


def deeplab_tf_tarball() -> bytes:
    """deeplabv3_pascal_train_aug_2018_01_04.tar.gz: one folder with the checkpoint and the frozen graph."""
    return make_tar({"deeplabv3_pascal_train_aug/model.ckpt.index": b"index" * 100,
                     "deeplabv3_pascal_train_aug/model.ckpt.data-00000-of-00001": bytes(range(256)) * 400,
                     "deeplabv3_pascal_train_aug/frozen_inference_graph.pb": b"graph" * 100})


def unpack_into(archive: Path, dest: Path, **kwargs) -> unpack.Unpacked:
    """The staged unpacking the download command runs, with its default bound."""
    kind = "zip" if archive.name.endswith(".zip") else "tar"
    return unpack.unpack_archive(archive, dest, kind=kind, limit=unpack.size_limit(archive.stat().st_size), **kwargs)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = download.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


# ----------------------------------------------------------------------------- the tests
def test_clean_download_then_second_run_does_nothing(server, tmp_path, capsys, lock_file):
    body = caffe_resnet_zip()
    server.serve(ARCHIVES["deeplab_aspp_resnet101"], body)
    models = tmp_path / "models"
    code, out, err = run(["voc12", "coco_init", "--models-dir", str(models), "--mirror", server.url, "--quiet"], capsys)
    assert code == 0, err
    assert len(server.requests) == 1  # one archive for two releases
    for name in ("voc12", "coco_init", "voc12_trainval"):
        release = CAFFE_RELEASES[name]
        assert release.source_path(models).is_file()  # where caffe2torch --dataset looks
    assert (models / "deeplabv2_resnet101" / "test.prototxt").is_file()
    assert "python -m converters.caffe2torch --dataset voc12" in out
    sha = hashlib.sha256(body).hexdigest()
    lock = json.loads(lock_file.read_text())
    assert lock["deeplab_aspp_resnet101"]["sha256"] == sha and lock["deeplab_aspp_resnet101"]["size"] == len(body)
    assert "no checksum is published" in err and str(lock_file) in err

    code, out, err = run(["voc12", "--models-dir", str(models), "--mirror", server.url, "--quiet"], capsys)
    assert code == 0 and "already in place" in out and "nothing to do" in out
    assert len(server.requests) == 1  # no network on the second run


def test_tf_tarballs_unpack_where_tf2torch_looks(server, tmp_path, capsys):
    server.serve(ARCHIVES["deeplabv3_pascal_train_aug_2018_01_04"], deeplab_tf_tarball())
    slim = TF_RELEASES["resnet_v1_50_2016_08_28"]
    server.serve(slim.archive, make_tar({slim.file_name: b"v1 checkpoint" * 50}))  # bare files
    models = tmp_path / "models"
    code, _, err = run(["deeplabv3_pascal_train_aug_2018_01_04", slim.name, "--models-dir", str(models),
                        "--mirror", server.url, "--quiet"], capsys)
    assert code == 0, err
    v3plus = TF_RELEASES["deeplabv3_pascal_train_aug_2018_01_04"]
    assert Path(f"{v3plus.source_path(models)}.index").is_file()
    assert slim.source_path(models).is_file()


def test_transfer_cut_midway_is_resumed_with_range(server, tmp_path, capsys):
    body = caffe_resnet_zip()
    archive = ARCHIVES["deeplab_aspp_resnet101"]
    server.serve(archive, body)
    server.cut_after[urlsplit(archive.url).path] = len(body) // 3
    code, _, err = run(["voc12", "--models-dir", str(tmp_path), "--mirror", server.url, "--quiet"], capsys)
    assert code == 0, err
    assert [r for _, r in server.requests] == [None, f"bytes={len(body) // 3}-"]
    assert "transfer interrupted" in err and "resuming" in err
    assert CAFFE_RELEASES["voc12"].source_path(tmp_path).read_bytes() == zipfile.ZipFile(io.BytesIO(body)).read(
        "train_iter_20000.caffemodel")


def test_interrupted_run_keeps_the_partial_file_and_the_next_run_resumes(server, tmp_path, capsys):
    body = deeplab_tf_tarball()
    archive = ARCHIVES["deeplabv3_pascal_train_aug_2018_01_04"]
    server.serve(archive, body)
    server.cut_after[urlsplit(archive.url).path] = 1000
    argv = [archive.key, "--models-dir", str(tmp_path), "--mirror", server.url, "--quiet"]
    code, _, err = run([*argv, "--retries", "0"], capsys)
    assert code == 1 and len(error_lines(err)) == 1
    assert "interrupted at 1,000 of" in err and "rerun the same command to resume" in err
    part = tmp_path / "downloads" / archive.key / (archive.file_name + ".part")
    assert part.stat().st_size == 1000
    assert not (tmp_path / "deeplabv3_pascal_train_aug").exists()  # nothing unpacked

    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert server.requests[-1][1] == "bytes=1000-" and "resuming" in err
    assert not part.exists()


def test_server_that_ignores_range_restarts_from_zero(server, tmp_path, capsys):
    body = deeplab_tf_tarball()
    archive = ARCHIVES["deeplabv3_pascal_train_aug_2018_01_04"]
    server.serve(archive, body)
    server.ignore_range = True
    part = tmp_path / "downloads" / archive.key / (archive.file_name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage from an earlier attempt")  # must not end up in the file
    code, _, err = run([archive.key, "--models-dir", str(tmp_path), "--mirror", server.url, "--quiet"], capsys)
    assert code == 0, err
    assert "ignored the resume request" in err
    assert (tmp_path / "downloads" / archive.key / archive.file_name).read_bytes() == body


def test_wrong_checksum_unpacks_nothing_and_removes_the_file(server, tmp_path):
    body = caffe_resnet_zip()
    base = ARCHIVES["deeplab_aspp_resnet101"]
    for algo in ("sha256", "md5"):
        archive = Archive(**{**base.__dict__, "key": f"wrong_{algo}", algo: "0" * (64 if algo == "sha256" else 32)})
        server.serve(archive, body)
        item = Item(archive, tmp_path, download.mirror_url(archive.url, server.url), ("voc12",))
        with pytest.raises(DownloadError) as info:
            download.process(item, lock={}, retries=0, timeout=10, quiet=True, say=lambda _: None)
        msg = str(info.value)
        assert "\n" not in msg and f"{algo} {getattr(hashlib, algo)(body).hexdigest()}" in msg
        assert "does not match the published" in msg and "removed it, nothing unpacked" in msg
        assert not item.download_path.exists() and not item.destination.exists()


def test_published_checksum_verifies(server, tmp_path):
    body = caffe_resnet_zip()
    archive = Archive(**{**ARCHIVES["deeplab_aspp_resnet101"].__dict__, "key": "good", "size": len(body),
                         "md5": hashlib.md5(body).hexdigest()})
    server.serve(archive, body)
    said: list[str] = []
    item = Item(archive, tmp_path, download.mirror_url(archive.url, server.url), ("voc12",))
    summary = download.process(item, lock={}, retries=0, timeout=10, quiet=True, say=said.append)
    assert "verified and unpacked" in summary and any("md5 verified" in s for s in said)
    assert CAFFE_RELEASES["voc12"].source_path(tmp_path).is_file()


def test_size_differs_from_the_published_one(server, tmp_path, capsys):
    voc = ARCHIVES["VOCtrainval_11-May-2012"]
    server.serve(voc, make_tar({"VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"2007_000033\n"}, "w"))
    code, _, err = run(["voc2012", "--data-root", str(tmp_path), "--mirror", server.url, "--quiet"], capsys)
    assert code == 1 and len(error_lines(err)) == 1
    assert f"{voc.size:,} bytes" in err and "wrong URL or mirror" in err
    assert not (tmp_path / "VOCdevkit").exists()


def test_404(server, tmp_path, capsys):
    code, _, err = run(["voc12", "--models-dir", str(tmp_path), "--mirror", server.url, "--quiet"], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and "Traceback" not in err
    assert "HTTP 404" in err and "by hand" in err and str(tmp_path / "downloads") in err


def test_truncated_archive_is_refused_and_not_locked(server, tmp_path, capsys, lock_file):
    body = deeplab_tf_tarball()
    server.serve(ARCHIVES["deeplabv3_pascal_train_aug_2018_01_04"], body[: len(body) // 2])
    code, _, err = run(["deeplabv3_pascal_train_aug_2018_01_04", "--models-dir", str(tmp_path), "--mirror",
                        server.url, "--quiet"], capsys)
    assert code == 1 and len(error_lines(err)) == 1
    assert "not a complete tar archive" in err and "nothing unpacked" in err
    assert not (tmp_path / "deeplabv3_pascal_train_aug").exists() and not lock_file.exists()


def test_truncated_plain_tar_and_zip_are_refused(tmp_path):
    tar = make_tar({"VOCdevkit/VOC2012/a.jpg": b"x" * 5000}, "w")
    (tmp_path / "t.tar").write_bytes(tar[:3000])
    with pytest.raises(UnpackError, match="truncated tar archive|not a complete tar"):
        unpack_into(tmp_path / "t.tar", tmp_path / "out")
    (tmp_path / "z.zip").write_bytes(caffe_resnet_zip()[:-100])
    with pytest.raises(UnpackError, match="not a complete zip archive"):
        unpack_into(tmp_path / "z.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lock_file_catches_a_changed_file(server, tmp_path, capsys):
    archive = ARCHIVES["deeplabv3_pascal_train_aug_2018_01_04"]
    server.serve(archive, deeplab_tf_tarball())
    argv = [archive.key, "--models-dir", str(tmp_path), "--mirror", server.url, "--quiet"]
    assert run(argv, capsys)[0] == 0
    other = tmp_path / "other"
    server.serve(archive, make_tar({"deeplabv3_pascal_train_aug/model.ckpt.index": b"something else"}))
    code, _, err = run([archive.key, "--models-dir", str(other), "--mirror", server.url, "--quiet"], capsys)
    assert code == 1 and len(error_lines(err)) == 1
    assert "differs from the" in err and "recorded in" in err
    assert not (other / "deeplabv3_pascal_train_aug").exists()


@pytest.mark.parametrize("kind", ["dotdot_zip", "absolute_tar", "symlink_out_tar", "through_link_tar", "symlink_zip"])
def test_unsafe_archives_are_refused(tmp_path, kind):
    path = tmp_path / ("a.zip" if kind.endswith("zip") else "a.tar.gz")
    if kind == "dotdot_zip":
        path.write_bytes(make_zip({"../evil.txt": b"x"}))
    elif kind == "symlink_zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo("link")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
        path.write_bytes(buf.getvalue())
    elif kind == "absolute_tar":
        path.write_bytes(make_tar({"/tmp/evil.txt": b"x"}))
    elif kind == "symlink_out_tar":
        path.write_bytes(make_tar({}, links={"deeplabv3/link": (tarfile.SYMTYPE, "../../outside")}))
    else:
        path.write_bytes(make_tar({"d/x": b"x"}, links={"d": (tarfile.SYMTYPE, "sub")}))  # d/x written via d
    with pytest.raises(UnpackError, match="refusing to unpack"):
        unpack_into(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_network_says_what_to_download_and_where(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(["voc12", "--models-dir", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}", "--quiet",
                        "--timeout", "5"], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and len(err.strip().splitlines()) <= 2
    archive = ARCHIVES["deeplab_aspp_resnet101"]
    assert "cannot reach 127.0.0.1" in err and archive.url in err
    assert str(tmp_path / "downloads" / archive.key / archive.file_name) in err


def test_dry_run_prints_the_plan_without_network(tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("--dry-run opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    code, out, err = run(["--dry-run", "voc12", "voc2012", "cocostuff164k", "deepfashion2", "--data-root",
                          str(tmp_path / "data")], capsys)
    assert code == 0, err
    voc12 = CAFFE_RELEASES["voc12"]
    assert voc12.url in out and "prototxt_and_model.zip" in out and "none published" in out
    assert str(voc12.source_path(download.MODELS_DIR)) in out
    voc = ARCHIVES["VOCtrainval_11-May-2012"]
    assert voc.url in out and voc.sha256 in out and f"{voc.size:,} bytes" in out
    for key in ("train2017", "val2017", "stuffthingmaps_trainval2017"):
        assert ARCHIVES[key].url in out
    assert "no direct download" in out and DATASETS["deepfashion2"].page in out
    assert not (tmp_path / "data").exists()


def test_unknown_name_is_a_usage_error(capsys):
    assert download.main(["voc_12"]) == 2 and "did you mean 'voc12'" in capsys.readouterr().err
    assert download.main([]) == 2 and download.main(["--list"]) == 0


def test_manual_dataset_in_place_and_missing(tmp_path, capsys):
    code, _, err = run(["deepfashion2", "--data-root", str(tmp_path)], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and "licence" in err
    for split in ("train", "validation"):
        (tmp_path / "deepfashion2" / split / "annos").mkdir(parents=True)
    code, out, _ = run(["deepfashion2", "--data-root", str(tmp_path)], capsys)
    assert code == 0 and "already in place" in out


def test_mirror_keeps_the_original_path():
    assert download.mirror_url("http://host/a/b/c.zip", "http://127.0.0.1:8/m/") == "http://127.0.0.1:8/m/a/b/c.zip"
    assert download.mirror_url("http://host/a.zip", None) == "http://host/a.zip"


def test_interrupted_unpacking_is_redone(server, tmp_path, capsys):
    """Files in place but no completion marker beside our download: the unpacking was cut short; redo it."""
    body = caffe_resnet_zip()
    archive = ARCHIVES["deeplab_aspp_resnet101"]
    server.serve(archive, body)
    argv = ["voc12", "--models-dir", str(tmp_path), "--mirror", server.url, "--quiet"]
    assert run(argv, capsys)[0] == 0
    marker = tmp_path / "downloads" / archive.key / "unpacked.json"
    marker.unlink()
    half = CAFFE_RELEASES["voc12"].source_path(tmp_path)
    half.write_bytes(half.read_bytes()[:10])  # as an interrupted extraction leaves it
    code, out, _ = run(argv, capsys)
    assert code == 0 and "verified and unpacked" in out and marker.is_file()
    assert half.read_bytes() == zipfile.ZipFile(io.BytesIO(body)).read(half.name)
    assert len(server.requests) == 1  # the kept archive was re-verified, not downloaded again


def test_the_registry_and_a_dry_run_do_not_load_torch():
    import subprocess
    import sys

    code = ("import sys; from reproduce import download; rc = download.main(['--dry-run', 'voc12', 'voc2012']); "
            "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_end_to_end_download_convert_hub(server, tmp_path, capsys, monkeypatch):
    """A real-format TF release tarball: downloaded where tf2torch --dataset looks, converted to where
    hubconf resolves the release name, loaded through torch.hub."""
    pytest.importorskip("tensorflow")
    import torch

    from converters import tf2torch
    from reproduce._smoke import make_tf_checkpoint

    release = TF_RELEASES["deeplabv3_mnv2_pascal_train_aug_2018_01_29"]
    src = tmp_path / "src"
    make_tf_checkpoint(release.name, src / release.folder / release.file_name)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src / release.folder, arcname=release.folder)
    server.serve(release.archive, buf.getvalue())

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the commands' defaults (data/models) are relative to where they run
    code, out, err = run([release.name, "--mirror", server.url, "--quiet"], capsys)
    assert code == 0, err
    assert f"python -m converters.tf2torch --dataset {release.name}" in out
    assert tf2torch.main(["--dataset", release.name, "--quiet"]) == 0
    assert release.default_output.is_file()
    repo = str(Path(__file__).resolve().parent.parent)
    model = torch.hub.load(repo, release.arch, source="local", weights=release.name)
    assert model.preprocessing == release.preprocessing
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(1, 3, 65, 65))).all()


def test_a_link_in_the_destination_pointing_elsewhere_stops_before_anything_is_written(server, tmp_path, capsys):
    server.serve(ARCHIVES["deeplabv3_pascal_train_aug_2018_01_04"], deeplab_tf_tarball())
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    (models / "deeplabv3_pascal_train_aug").symlink_to(elsewhere)
    code, _, err = run(["deeplabv3_pascal_train_aug_2018_01_04", "--models-dir", str(models), "--mirror", server.url,
                        "--quiet"], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and "would land outside" in err and "nothing unpacked" in err
    assert list(elsewhere.iterdir()) == []


# ----------------------------------------------------------------------------- staged, bounded unpacking
TF_ARCHIVE = ARCHIVES["deeplabv3_pascal_train_aug_2018_01_04"]


def tf_members() -> dict[str, bytes]:
    return {"deeplabv3_pascal_train_aug/model.ckpt.index": b"index" * 100,
            "deeplabv3_pascal_train_aug/model.ckpt.data-00000-of-00001": bytes(range(256)) * 400,
            "deeplabv3_pascal_train_aug/frozen_inference_graph.pb": b"graph" * 100}


def tar_of(entries: list[tuple[str, bytes, bytes | str]], mode: str = "w") -> bytes:
    """A tar of ``(name, tarfile type, data or link target)`` entries, in this order (duplicates allowed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload
                tf.addfile(info)
    return buf.getvalue()


def only_downloads(root: Path) -> bool:
    """Nothing but our downloads folder under ``root``: no partial tree, no staging folder."""
    return sorted(p.name for p in root.iterdir()) == ["downloads"]


def test_a_link_chain_out_of_the_folder_is_one_line_and_the_genuine_file_is_accepted_afterwards(
        server, tmp_path, capsys, lock_file):
    """``a -> .`` then ``b -> a/..``: each link alone stays inside, together they leave the folder (Python's data
    filter raised uncaught, after the lock had been pinned to this archive)."""
    server.serve(TF_ARCHIVE, make_tar(tf_members(), links={"a": (tarfile.SYMTYPE, "."),
                                                            "b": (tarfile.SYMTYPE, "a/..")}))
    models = tmp_path / "models"
    argv = [TF_ARCHIVE.key, "--models-dir", str(models), "--mirror", server.url, "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 1 and len(error_lines(err)) == 1 and "Traceback" not in err
    assert "link 'b' -> 'a/..' points outside the destination" in err and "removed the download" in err
    assert only_downloads(models) and not lock_file.exists()
    genuine = deeplab_tf_tarball()
    server.serve(TF_ARCHIVE, genuine)
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "verified and unpacked 3 files" in out and "within the bound of" in out
    assert json.loads(lock_file.read_text())[TF_ARCHIVE.key]["sha256"] == hashlib.sha256(genuine).hexdigest()


@pytest.mark.parametrize("kind,entries,match", [
    ("chain_of_three", [("a", tarfile.SYMTYPE, "."), ("b", tarfile.SYMTYPE, "a/.."), ("c", tarfile.SYMTYPE, "b/../..")],
     "link 'b' -> 'a/..' points outside"),
    ("loop", [("x", tarfile.SYMTYPE, "y"), ("y", tarfile.SYMTYPE, "x")], "or loops"),
    ("link_later_followed", [("d/f", tarfile.REGTYPE, b"1"), ("d", tarfile.SYMTYPE, "..")], "goes through the link"),
    ("file_then_folder", [("x", tarfile.REGTYPE, b"1"), ("x/y", tarfile.REGTYPE, b"2")],
     "'x/y' is inside 'x', which the archive also has as a file"),
    ("folder_then_file", [("x/y", tarfile.REGTYPE, b"1"), ("x", tarfile.REGTYPE, b"2")], "also has as a file"),
    ("duplicate", [("x", tarfile.REGTYPE, b"1"), ("x", tarfile.REGTYPE, b"2")], "'x' appears twice"),
    ("case_only", [("Model/x", tarfile.REGTYPE, b"1"), ("model/y", tarfile.REGTYPE, b"2")], "differ only in case"),
    ("hard_link_to_a_later_file", [("h", tarfile.LNKTYPE, "x"), ("x", tarfile.REGTYPE, b"1")],
     "does not name an earlier file"),
    ("hard_link_out", [("h", tarfile.LNKTYPE, "../x")], "outside the destination"),
    ("fifo", [("f", tarfile.FIFOTYPE, "")], "device or special file"),
])
def test_unsafe_trees_are_refused_before_anything_is_written(tmp_path, kind, entries, match):
    path = tmp_path / "a.tar"
    path.write_bytes(tar_of([("ok/first.txt", tarfile.REGTYPE, b"written first"), *entries]))
    with pytest.raises(UnpackError, match=match) as info:
        unpack_into(path, tmp_path / "out" / "dest")
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_zip_collisions_are_refused(tmp_path):
    import warnings

    for members, match in [({"x": b"1", "x/y": b"2"}, "also has as a file"),
                           ({"A/x": b"1", "a/y": b"2"}, "differ only in case")]:
        path = tmp_path / "a.zip"
        path.write_bytes(make_zip(members))
        with pytest.raises(UnpackError, match=match):
            unpack_into(path, tmp_path / "out")
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        zf.writestr("x", b"1")
        zf.writestr("x", b"2")
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnpackError, match="'x' appears twice"):
        unpack_into(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_followed_by_a_folder_of_its_name_leaves_nothing_and_is_never_in_place(server, tmp_path, capsys):
    """It used to leave a partial tree (traceback) that a later run reported as already in place."""
    names = sorted(r.file_name for r in CAFFE_RELEASES.values() if r.archive.key == "deeplab_aspp_resnet101")
    body = make_zip({**{n: b"weights" for n in names}, "test.prototxt": b"x", "test.prototxt/inner": b"y"})
    server.serve(ARCHIVES["deeplab_aspp_resnet101"], body)
    models = tmp_path / "models"
    argv = ["voc12", "--models-dir", str(models), "--mirror", server.url, "--quiet"]
    for _ in range(2):
        code, out, err = run(argv, capsys)
        assert code == 1 and len(error_lines(err)) == 1 and "Traceback" not in err
        assert "which the archive also has as a file" in err and "already in place" not in out
        assert only_downloads(models)


def test_already_in_place_only_after_a_complete_verified_unpack(server, tmp_path, capsys):
    body = caffe_resnet_zip()
    archive = ARCHIVES["deeplab_aspp_resnet101"]
    server.serve(archive, body)
    models = tmp_path / "models"
    argv = ["voc12", "--models-dir", str(models), "--mirror", server.url, "--quiet"]
    for pattern in archive.expect:  # a tree with no completion marker and no download of ours
        (models / pattern).parent.mkdir(parents=True, exist_ok=True)
        (models / pattern).write_bytes(b"half")
    code, out, _ = run(argv, capsys)
    assert code == 0 and "already in place" not in out and "not verified" in out and not server.requests
    for pattern in archive.expect:
        (models / pattern).unlink()
    assert run(argv, capsys)[0] == 0
    marker = models / "downloads" / archive.key / "unpacked.json"
    assert json.loads(marker.read_text())["files"] == 5
    marker.write_text("{")  # a damaged marker proves nothing: unpack again from the kept archive
    code, out, _ = run(argv, capsys)
    assert code == 0 and "verified and unpacked" in out and len(server.requests) == 1
    code, out, _ = run(argv, capsys)
    assert code == 0 and "already in place" in out


def test_a_zip_that_inflates_past_the_bound_is_refused_before_writing(server, tmp_path, capsys, lock_file):
    """About 1 MB of zip declaring 1 GiB (three honest deflate streams of zeros)."""
    from tests.fuzzing import deflate_zeros, raw_zip

    names = ["init.caffemodel", "train_iter_20000.caffemodel", "train2_iter_20000.caffemodel"]
    entries = []
    for name, mib in zip(names, (342, 341, 341)):
        data, crc = deflate_zeros(mib)
        entries.append((name, zipfile.ZIP_DEFLATED, crc, data, mib << 20))
    body = raw_zip(entries)
    assert len(body) < 1_100_000
    archive = ARCHIVES["deeplab_aspp_resnet101"]
    server.serve(archive, body)
    models = tmp_path / "models"
    code, _, err = run(["voc12", "--models-dir", str(models), "--mirror", server.url, "--quiet"], capsys)
    assert code == 1 and len(error_lines(err)) == 1
    assert f"unpacks to 1.1 GB ({1 << 30:,} bytes), more than the bound of 67.1 MB" in err
    assert only_downloads(models) and not lock_file.exists()
    assert not (models / "downloads" / archive.key / archive.file_name).exists()  # nothing vouched for it


def test_not_enough_free_space_is_refused_before_writing_and_the_archive_kept(tmp_path, monkeypatch):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(deeplab_tf_tarball())
    from types import SimpleNamespace

    monkeypatch.setattr(unpack.shutil, "disk_usage", lambda _: SimpleNamespace(total=10**6, used=10**6 - 1000,
                                                                               free=1000))
    with pytest.raises(UnpackError, match=r"unpacks to 103.4 KB, only 1.0 KB free under") as info:
        unpack_into(path, tmp_path / "out")
    assert not info.value.archive_fault and not (tmp_path / "out").exists()


def test_a_full_disk_leaves_nothing_under_the_final_names(server, tmp_path, lock_file):
    """The file size limit (RLIMIT_FSIZE, what ``ulimit -f`` sets) below one member: the write fails mid-way."""
    import subprocess
    import sys

    archive = ARCHIVES["deeplab_aspp_resnet101"]
    models = tmp_path / "models"
    download_path = models / "downloads" / archive.key / archive.file_name
    download_path.parent.mkdir(parents=True)
    download_path.write_bytes(caffe_resnet_zip())  # as if fetched: members of 128 KiB
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); "
            "from reproduce import download; sys.exit(download.main(sys.argv[1:]))")
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code, "voc12", "--models-dir", str(models), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo), download.LOCK_ENV: str(lock_file)})
    assert proc.returncode == 1 and len(error_lines(proc.stderr)) == 1, proc.stderr
    assert "File too large" in proc.stderr and "nothing unpacked" in proc.stderr and "Traceback" not in proc.stderr
    assert only_downloads(models) and not lock_file.exists()
    assert download_path.is_file() and not (download_path.parent / "unpacked.json").exists()  # the disk's fault


@pytest.mark.parametrize("content", ['{"deeplab_aspp_resnet101": "x"}', '{"deeplab_aspp_resnet101": {"sha256": 5}}',
                                     '{"deeplab_aspp_resnet101": {}}', "[1]", "{not json", "\udcff", None])
def test_a_damaged_lock_file_is_one_line_naming_it(server, tmp_path, capsys, lock_file, content):
    server.serve(ARCHIVES["deeplab_aspp_resnet101"], caffe_resnet_zip())
    lock_file.parent.mkdir(parents=True)
    if content is None:
        lock_file.mkdir()
    else:
        lock_file.write_bytes(content.encode("utf-8", "surrogateescape"))
    for extra in (["--dry-run"], []):
        code, _, err = run(["voc12", "--models-dir", str(tmp_path), "--mirror", server.url, "--quiet", *extra], capsys)
        assert code == 1 and len(error_lines(err)) == 1 and "Traceback" not in err
        assert error_lines(err)[0].startswith(f"error: {lock_file}: ")


def test_unpacking_merges_into_existing_folders_and_removes_killed_runs_staging(tmp_path):
    dest = tmp_path / "data"
    (dest / "VOCdevkit" / "VOC2012" / "SegmentationClassAug").mkdir(parents=True)
    (dest / "VOCdevkit" / "VOC2012" / "SegmentationClassAug" / "mine.png").write_bytes(b"user file")
    stale = dest / f"{unpack.STAGING_PREFIX}999999999-0000"  # no such process
    (stale / "half").mkdir(parents=True)
    path = tmp_path / "voc.tar"
    path.write_bytes(make_tar({"VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"2007_000033\n"}, "w"))
    result = unpack_into(path, dest, expect=["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"])
    assert (result.files, result.bytes) == (1, 12)
    assert (dest / "VOCdevkit" / "VOC2012" / "SegmentationClassAug" / "mine.png").read_bytes() == b"user file"
    assert sorted(p.name for p in dest.iterdir()) == ["VOCdevkit"]
    with pytest.raises(UnpackError, match="has no VOCdevkit/VOC2012/JPEGImages"):
        unpack_into(path, dest, expect=["VOCdevkit/VOC2012/JPEGImages"])
    (dest / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    (dest / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation").rmdir()
    (dest / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation").write_bytes(b"a file where a folder goes")
    with pytest.raises(UnpackError, match="is a file, the archive has a folder there"):
        unpack_into(path, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["VOCdevkit"]
