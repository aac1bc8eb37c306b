import pytest

from pipeline.discover import DatasetError, discover
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
