import pytest

from pipeline.building.discover import DatasetError, discover
from tests.conftest import make_class_tree


def test_classes_sorted_and_junk_skipped(tmp_path):
    make_class_tree(tmp_path, {"zeta": 2, "alpha": 3})
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "alpha" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "alpha" / "notes.txt").write_text("x")
    (tmp_path / "README.md").write_text("x")
    d = discover(tmp_path)
    assert d.classes == ["alpha", "zeta"]
    assert [label for _, label in d.files] == [0, 0, 0, 1, 1]
    reasons = dict(d.skipped)
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons["alpha/.DS_Store"] == "hidden file"
    assert reasons["alpha/notes.txt"] == "not an image (extension)"
    assert reasons["README.md"] == "file outside any class folder"


def test_nested_copy_folder_is_not_a_class(tmp_path):
    make_class_tree(tmp_path, {"bart": 2, "homer": 2})
    make_class_tree(tmp_path / "simpsons_dataset", {"bart": 1, "homer": 1})
    (tmp_path / "bart" / "sub").mkdir()
    d = discover(tmp_path)
    assert d.classes == ["bart", "homer"]
    assert "simpsons_dataset" in dict(d.skipped)
    assert dict(d.skipped)["bart/sub"] == "folder inside a class folder"


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        discover(tmp_path / "nope")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images found"):
        discover(tmp_path)


def test_fingerprint_changes_with_content(tmp_path):
    make_class_tree(tmp_path, {"a": 2, "b": 2})
    f1 = discover(tmp_path).fingerprint()
    assert discover(tmp_path).fingerprint() == f1
    (tmp_path / "a" / "img_000.jpg").write_bytes((tmp_path / "b" / "img_001.jpg").read_bytes() + b"x")
    assert discover(tmp_path).fingerprint() != f1


def test_default_data_dir_prefers_the_notebooks_locations(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli
    from pipeline.building.discover import EMBEDDED_DEFAULT, default_data_dir

    path, how = default_data_dir(tmp_path)
    assert path == tmp_path / EMBEDDED_DEFAULT and "look-alike" in how
    (tmp_path / "data/simpsons/archive/characters_train").mkdir(parents=True)
    assert default_data_dir(tmp_path)[0] == tmp_path / "data/simpsons/archive/characters_train"
    make_class_tree(tmp_path / "characters_train", {"bart": 3, "homer": 3})
    path, how = default_data_dir(tmp_path)
    assert path == tmp_path / "characters_train" and "real set" in how
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli.main, ["preprocess", "--size", "16", "--workers", "1", "--out", "sh"])
    assert r.exit_code == 0, r.output
    assert "using the real set found at characters_train" in r.output
    import json
    manifest = json.loads((tmp_path / "sh" / "manifest.json").read_text())
    assert manifest["class_names"] == ["bart", "homer"]
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == 6


def test_info_reports_the_pil_backend():
    from click.testing import CliRunner

    import cli
    from pipeline.common.env import pil_backend

    r = CliRunner().invoke(cli.main, ["info"])
    assert r.exit_code == 0
    backend = "Pillow-SIMD" if pil_backend()["pillow_simd"] else "Pillow"
    assert f"({backend})" in r.output and "libjpeg-turbo" in r.output and "CUDA devices" in r.output
