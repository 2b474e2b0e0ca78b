"""The shipped int8 classifiers against committed golden predictions and tight accuracy floors.

tests/data/{fer,ser}_golden.json hold, per fixed held-out set, the identity of the item list
(sha256 of the names), the labels, the model's top-1 per item and a floor a few points under the
measured accuracy (``tests/helpers/goldens.py`` computes both sides; scripts/make_goldens.py
writes the files). A swapped pair of classes, a preprocessing change (a blurred crop) or a
feature bug (time-reversed audio) fails these; a model change fails them until the goldens are
regenerated deliberately, in the same commit as the model and its card.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from redsg_edge.datasets import DATA_ROOT

from .conftest import FER_MODEL, SER_MODEL
from .helpers import goldens

DATA = Path(__file__).resolve().parent / "data"


def load_golden(name: str, model: Path, flag: str) -> dict:
    doc = json.loads((DATA / name).read_text(encoding="utf-8"))
    sha = goldens.sha256_file(model)
    assert sha == doc["model_sha256"], (
        f"{model} (sha256 {sha[:12]}) is not the model tests/data/{name} was made for "
        f"({doc['model_sha256'][:12]}): run `python scripts/make_goldens.py {flag}` and commit "
        "the new goldens with the model and its card")
    cal = goldens.calibration_sha256(model)
    assert cal == doc.get("calibration_sha256"), (
        f"{model.with_suffix('.json')} (the calibration) is not the one tests/data/{name} was made "
        f"with: run `python scripts/make_goldens.py {flag}` and commit the new goldens with it")
    return doc


def check_sets(golden: dict, measured: dict) -> None:
    problems = []
    for name, g in golden["sets"].items():
        m = measured[name]
        if (m["n"], m["names_sha256"], m["labels"]) != (g["n"], g["names_sha256"], g["labels"]):
            problems.append(f"{name}: the item list or labels differ from the golden's "
                            f"({m['n']} items, expected {g['n']}): data changed?")
            continue
        flips = goldens.flips(g["top1"], m["top1"])
        if m["acc"] < g["floor"]:
            problems.append(f"{name}: accuracy {m['acc']:.4f} < floor {g['floor']:.3f} "
                            f"(golden {g['acc']:.4f}, n {g['n']})")
        if flips > g["max_flips"]:
            problems.append(f"{name}: {flips} of {g['n']} top-1 predictions differ from the "
                            f"golden table (at most {g['max_flips']} allowed)")
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not (DATA_ROOT / "fer2013.zip").is_file() or not (DATA_ROOT / "ck48.zip").is_file(),
                    reason="../shared/data/fer2013.zip or ck48.zip missing")
def test_fer_matches_goldens_and_floors():
    golden = load_golden("fer_golden.json", FER_MODEL, "--fer")
    check_sets(golden, goldens.fer_sets(FER_MODEL))


@pytest.mark.skipif(not (DATA_ROOT / "ravdess" / "index.csv").is_file(),
                    reason="../shared/data/ravdess missing")
def test_ser_matches_goldens_and_floors():
    golden = load_golden("ser_golden.json", SER_MODEL, "--ser")
    check_sets(golden, goldens.ser_set(SER_MODEL))
