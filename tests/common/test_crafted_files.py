"""Crafted shards, models and checkpoints: headers that point outside their file, plugins, bombs.

Each case is run the way a user would meet it (``verify``, ``train``,
``predict``, ``evaluate``) in a fresh process under a 4 GB address-space
limit (:func:`tests.common.test_untrusted.cli`): one line naming the file
and the reason, exit 1, nothing outside the file read into a result.
"""

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.shardset import shard_format
from tests.common.test_untrusted import cli_many, one_line


def recraft(path: Path, build) -> None:
    """Rewrite the shard at ``path`` with ``build(f, attrs, old)`` and make the manifest agree with it,
    as whoever crafted the set would (sizes and SHA-256 match: only the header is hostile)."""
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        old = {k: f[k][...] for k in f}
    path.unlink()
    with h5py.File(path, "w") as f:
        build(f, old)
        for k, v in attrs.items():
            f.attrs[k] = v
    m = json.loads((path.parent / "manifest.json").read_text())
    for e in m["shards"]:
        if e["file"] == path.name:
            e.update(bytes=path.stat().st_size, sha256=shard_format.file_sha256(path))
    (path.parent / "manifest.json").write_text(json.dumps(m))


def rest(f, old, skip=("images",)):
    for k, v in old.items():
        if k not in skip:
            f.create_dataset(k, data=v)


def external_storage(secret):
    def build(f, old):
        n, s = old["images"].shape[:2]
        f.create_dataset("images", shape=old["images"].shape, dtype=np.uint8,
                         external=[(str(secret), 0, n * s * s * 3)])
        rest(f, old)
    return build


def soft_link(f, old):
    f.create_dataset("elsewhere", data=old["images"])
    f["images"] = h5py.SoftLink("/elsewhere")
    rest(f, old)


def external_link(secret_h5):
    def build(f, old):
        f["images"] = h5py.ExternalLink(str(secret_h5), "/images")
        rest(f, old)
    return build


def virtual(secret_h5):
    def build(f, old):
        layout = h5py.VirtualLayout(shape=old["images"].shape, dtype=np.uint8)
        layout[:] = h5py.VirtualSource(str(secret_h5), "images", shape=old["images"].shape)
        f.create_virtual_dataset("images", layout)
        rest(f, old)
    return build


def plugin_filter(f, old):
    f.create_dataset("images", data=old["images"], chunks=(1,) + old["images"].shape[1:], compression=307,
                     allow_unknown_filter=True)
    rest(f, old)


def huge_chunks(f, old):   # one 96 MB chunk of nothing: HDF5 would allocate it to read one image
    size = old["images"].shape[1]
    n = (96 << 20) // (size * size * 3)
    f.create_dataset("images", shape=(n, size, size, 3), dtype=np.uint8, chunks=(n, size, size, 3),
                     compression="gzip")
    f.create_dataset("labels", data=np.zeros(n, dtype=np.int16))


def inflating(f, old):     # chunks never written read back as zeros: gigabytes from a few KB
    size = old["images"].shape[1]
    n = (2 << 30) // (size * size * 3)
    f.create_dataset("images", shape=(n, size, size, 3), dtype=np.uint8, chunks=(1, size, size, 3),
                     compression="gzip")
    f.create_dataset("labels", data=np.zeros(n, dtype=np.int16))


def float_labels(f, old):
    rest(f, old, skip=("labels",))
    f.create_dataset("labels", data=old["labels"].astype(np.float64) + 0.5)


CASES = {   # name: (how the shard is rewritten, what the one line says)
    "external": (lambda secret, secret_h5: external_storage(secret), "stored in other files"),
    "soft": (lambda *_: soft_link, "is a link (SoftLink)"),
    "extlink": (lambda secret, secret_h5: external_link(secret_h5), "is a link (ExternalLink)"),
    "virtual": (lambda secret, secret_h5: virtual(secret_h5), "stored in other files"),
    "plugin": (lambda *_: plugin_filter, "HDF5 filter 307"),
    "chunks": (lambda *_: huge_chunks, "declares chunks"),
    "inflating": (lambda *_: inflating, "bytes of pixels in a file of"),
    "labels": (lambda *_: float_labels, "'labels' is float64"),
}


def test_a_shard_header_pointing_outside_its_file_or_at_a_plugin_is_refused_unread(easy_shards, tmp_path):
    secret = tmp_path / "secret.bin"       # what a crafted shard would make the tool read as pixels
    secret.write_bytes(b"SECRET" * 200_000)
    secret_h5 = tmp_path / "secret.h5"
    with h5py.File(secret_h5, "w") as f:
        f.create_dataset("images", data=np.full((64, 32, 32, 3), 7, dtype=np.uint8))
    runs, expect = [], []
    for case, (build, reason) in CASES.items():
        out = Path(shutil.copytree(easy_shards, tmp_path / case))
        path = out / json.loads((out / "manifest.json").read_text())["shards"][0]["file"]
        recraft(path, build(secret, secret_h5))
        runs += [("verify", "--out", out),
                 ("train", "--shards", out, "--device", "cpu", "--epochs", 1, "--out", tmp_path / f"run-{case}")]
        expect += [(case, path, reason)] * 2
    for (case, path, reason), args, (code, text) in zip(expect, runs, cli_many(*runs)):
        assert code == 1 and reason in text and str(path) in text, (case, text)
        if args[0] == "train":
            one_line(text)
            assert not (tmp_path / f"run-{case}" / "last.pt").exists()


@pytest.fixture(scope="module")
def onnx_model(finished, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from pipeline.inference.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(finished / "best.pt", out)
    return out


def crafted_model(src: Path, dst: Path, edit) -> Path:
    import onnx

    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def set_meta(**values):
    def edit(model):
        for p in model.metadata_props:
            if p.key in values:
                p.value = values[p.key]
    return edit


def test_a_model_reading_weights_from_another_file_is_refused(onnx_model, tmp_path, easy_shards):
    import onnx
    import onnxruntime as ort

    outside = tmp_path / "models"   # a file beside the model: any file in the folder the model lies in
    outside.mkdir()

    def externalise(model):   # the largest weight read from "weights.bin" beside it
        init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        (outside / "weights.bin").write_bytes(init.raw_data)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        init.external_data.add(key="location", value="weights.bin")

    evil = crafted_model(onnx_model, tmp_path / "models" / "evil.onnx", externalise)
    ort.InferenceSession(str(evil), providers=["CPUExecutionProvider"])   # by path, it would read the other file
    image = next(Path(easy_shards).parent.rglob("*.jpg"), None) or evil
    [(code, out)] = cli_many(("predict", "--onnx", evil, image))
    line = one_line(out)
    assert code == 1 and str(evil) in line and "not an ONNX model ONNX Runtime can load" in line


METADATA = [
    ({"class_names": json.dumps(["a", "b"])}, "2 class names for an output of"),
    ({"class_names": json.dumps({"rm -rf": 1})}, "class_names is not a list of names"),
    ({"class_names": "[" * 100_000}, "metadata is not what export writes"),
    ({"image_size": "1000000"}, "image_size 1000000"),
    ({"fit": "\x1b]0;owned\x07"}, "fit '\\x1b]0;owned\\x07'"),
]


def add_node(op_type, domain=""):
    def edit(model):   # never reached by the graph's outputs: refused for what it is, not what it does
        model.graph.node.append(__import__("onnx").helper.make_node(op_type, ["images"], ["spin"], domain=domain))
    return edit


GRAPHS = [
    (add_node("Loop"), "operator Loop is not one export writes"),
    (add_node("Gelu", "com.microsoft"), "operator com.microsoft.Gelu"),
]


def test_model_metadata_out_of_range_or_a_graph_export_never_writes_is_one_line(onnx_model, tmp_path):
    from PIL import Image

    image = tmp_path / "x.jpg"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    cases = [(set_meta(**meta), reason) for meta, reason in METADATA] + GRAPHS
    models = [crafted_model(onnx_model, tmp_path / f"evil{k}.onnx", edit) for k, (edit, _) in enumerate(cases)]
    results = cli_many(*[("predict", "--onnx", m, image) for m in models])
    for model, (_, reason), (code, out) in zip(models, cases, results):
        line = one_line(out)
        assert code == 1 and str(model) in line and reason in line and "\x1b" not in out, out


def test_a_checkpoint_whose_entries_inflate_is_refused_unread(finished, tmp_path):
    evil = tmp_path / "bomb.pt"
    ckpt = torch.load(finished / "best.pt", weights_only=True)
    ckpt["model"]["padding"] = torch.zeros(32 << 20, dtype=torch.uint8)   # 32 MB of zeros
    plain = tmp_path / "plain.pt"
    torch.save(ckpt, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(evil, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    plain.unlink()
    assert evil.stat().st_size < (32 << 20) // 2   # the zeros packed away: smaller than what it declares
    for code, out in cli_many(("evaluate", evil), ("export", evil), ("train", "--resume", evil)):
        line = one_line(out)
        assert code == 1 and str(evil) in line and "compressed entries" in line, out


def test_a_checkpoint_naming_a_shard_folder_that_is_no_path_or_no_store_is_one_line(finished, tmp_path):
    runs = []
    for k, shards in enumerate((12345, "ftp://bucket/set", "x" * 5000)):
        ckpt = torch.load(finished / "last.pt", weights_only=True)
        ckpt["shards"] = shards
        path = tmp_path / f"run{k}" / "last.pt"
        path.parent.mkdir()
        torch.save(ckpt, path)
        runs.append(("train", "--resume", path, "--device", "cpu"))
    reasons = ("its shard folder is not a path", "ftp://bucket/set: not a location", "its shard folder is not a path")
    for (_, _, path, *_), reason, (code, out) in zip(runs, reasons, cli_many(*runs)):
        line = one_line(out)
        assert code == 1 and str(path) in line and reason in line, out
        assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]   # nothing written beside it
