"""scripts/fer_teacher.py refuses a face-api package that is missing or not version 1.7.15, naming
the file, before any training reads its weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import fer_teacher  # noqa: E402


def test_missing_package_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"face_expression_model.*@vladmandic/face-api 1\.7\.15"):
        fer_teacher.load_weights(tmp_path / "package")


def test_weights_of_another_release_are_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "face_expression_model-weights_manifest.json").write_text(
        '[{"paths": ["face_expression_model.bin"], "weights": '
        '[{"name": "fc/bias", "shape": [7], "dtype": "float32"}]}]')
    (model / "face_expression_model.bin").write_bytes(bytes(28))
    with pytest.raises(ValueError, match="sha256 differs from face-api 1.7.15"):
        fer_teacher.load_weights(tmp_path)


def test_class_map_is_a_permutation_onto_ours():
    from redsg_edge import CLASSES
    assert sorted(fer_teacher.TO_OURS) == list(range(7))
    names = [fer_teacher.FACE_API_CLASSES[i] for i in fer_teacher.TO_OURS]
    # face-api's adjectives against our nouns, class by class.
    assert [n[:3] for n in names] == [c[:3] for c in CLASSES]
