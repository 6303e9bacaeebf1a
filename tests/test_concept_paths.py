"""Files a concept set names: relative paths beside the user's TOML, then under --root, then the
data folders; ``--annotations FILE ...`` on the command line; errors naming exactly the paths
tried.  COCO files are written by the test (tests/test_coco.py's ``make_coco``)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_coco import make_coco

from neuroprobe.cli import main
from neuroprobe.concepts import open_concepts
from neuroprobe.concepts.paths import data_path_candidates
from neuroprobe.errors import ConceptSetError
from neuroprobe.resources import shipped_dir

MAP_TOML = '[map]\nvehicle = ["car"]\ndrink = ["bottle"]\n"animal part" = ["dog"]\n'


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """COCO json + image, a user's concept-set folder, private data and cache folders, and a
    working folder elsewhere."""
    monkeypatch.setenv("NEUROPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NEUROPROBE_DATA", str(tmp_path / "data"))
    ann, _ = make_coco(tmp_path)                  # tmp/person_keypoints_test.json, tmp/imgs/
    sets = tmp_path / "sets"
    (sets / "ann").mkdir(parents=True)
    shutil.copy(ann, sets / "ann" / ann.name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return {"tmp": tmp_path, "ann": ann, "sets": sets, "imgs": tmp_path / "imgs", "work": work}


def _toml(folder: Path, annotations: list[str], name: str = "my-coco.toml") -> Path:
    path = folder / name
    path.write_text('source = "coco-parts"\nannotations = ' + json.dumps(annotations) + "\n"
                    + MAP_TOML)
    return path


def test_relative_annotations_are_found_beside_the_toml(world):
    toml = _toml(world["sets"], ["ann/person_keypoints_test.json"])
    ds = open_concepts(str(toml), root=str(world["imgs"]), image_size=32)
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 32, 32)
    assert ds.annotation_files == [str(world["sets"] / "ann" / "person_keypoints_test.json")]


def test_then_under_the_root_folder(world):
    shutil.copy(world["ann"], world["imgs"] / "only-in-root.json")
    toml = _toml(world["sets"], ["only-in-root.json"])
    ds = open_concepts(str(toml), root=str(world["imgs"]))
    assert ds.annotation_files == [str(world["imgs"] / "only-in-root.json")]


def test_beside_the_toml_comes_before_the_root(world):
    shutil.copy(world["ann"], world["imgs"] / "both.json")
    shutil.copy(world["ann"], world["sets"] / "both.json")
    ds = open_concepts(str(_toml(world["sets"], ["both.json"])), root=str(world["imgs"]))
    assert ds.annotation_files == [str(world["sets"] / "both.json")]


def test_error_lists_exactly_the_paths_tried(world):
    toml = _toml(world["sets"], ["annotations/missing.json"])
    with pytest.raises(ConceptSetError) as exc:
        open_concepts(str(toml), root=str(world["imgs"]))
    msg = str(exc.value)
    assert "\n" not in msg
    tried = msg.split("(tried ", 1)[1].split(")", 1)[0].split(", ")
    t = world["tmp"]
    assert tried == [str(t / "sets" / "annotations" / "missing.json"),     # beside the TOML
                     str(t / "imgs" / "annotations" / "missing.json"),     # under --root
                     str(t / "data" / "annotations" / "missing.json"),     # $NEUROPROBE_DATA
                     str(t / "cache" / "data" / "annotations" / "missing.json")]
    assert "shared" not in msg and str(world["work"]) not in msg      # not the working folder
    assert f"set `annotations` in {toml}" in msg                      # the user's own file


def test_shipped_set_never_points_into_the_package(world):
    shipped = shipped_dir("concepts")
    with pytest.raises(ConceptSetError) as exc:
        open_concepts("coco-parts", annotations=["nowhere.json"], root=str(world["imgs"]))
    msg = str(exc.value)
    assert str(shipped) not in msg.split("(tried ", 1)[1].split(")", 1)[0]
    assert str(world["work"] / "nowhere.json") in msg                 # given: the working folder
    assert "pass --annotations FILE" in msg and "a copy of" in msg    # not "edit the package"
    with pytest.raises(ConceptSetError) as exc:
        open_concepts("coco-parts")
    assert "pass --annotations FILE" in str(exc.value)


def test_candidates_of_a_given_value_start_in_the_working_folder(world):
    toml = _toml(world["sets"], [])
    spec = {"_path": str(toml)}
    given = data_path_candidates("x.json", spec, given=True, root=world["imgs"])
    from_file = data_path_candidates("x.json", spec, given=False, root=world["imgs"])
    assert given[0] == world["work"] / "x.json" and from_file[0] == world["sets"] / "x.json"
    assert given[1:] == from_file[1:]
    assert data_path_candidates(world["ann"], spec) == [world["ann"]]    # absolute: as it is


def test_cli_annotations_relative_to_the_working_folder(world, capsys):
    shutil.copy(world["ann"], world["work"] / "mine.json")
    rc = main(["concepts", "info", "coco-parts", "--annotations", "mine.json",
               "--root", str(world["imgs"])])
    assert rc == 0
    assert "images:      1" in capsys.readouterr().out


def test_cli_annotations_for_a_set_without_annotations_is_one_line(world, capsys):
    rc = main(["concepts", "info", "synthetic", "--annotations", "mine.json"])
    assert rc == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("neuroprobe: error:") and "reads no COCO annotations" in line


def test_cli_missing_annotation_file_is_one_line(world, capsys):
    rc = main(["concepts", "info", "coco-parts", "--annotations", "gone.json",
               "--root", str(world["imgs"])])
    assert rc == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "COCO annotation file 'gone.json' not found (tried " in line
    assert str(world["work"] / "gone.json") in line


def test_dissect_with_annotations_records_them(world):
    shutil.copy(world["ann"], world["work"] / "mine.json")
    out = world["tmp"] / "run"
    rc = main(["--quiet", "dissect", "--model", "demo", "--concepts", "coco-parts",
               "--annotations", "mine.json", "--root", str(world["imgs"]), "--image-size", "32",
               "--batch-size", "1", "--workers", "0", "--out", str(out)])
    assert rc == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["concepts"]["annotations"] == [str(world["work"] / "mine.json")]
    # --from re-runs it from another working folder: the recorded absolute paths still resolve
    (world["tmp"] / "elsewhere").mkdir()
    os.chdir(world["tmp"] / "elsewhere")
    assert main(["--quiet", "dissect", "--from", str(out), "--workers", "0",
                 "--out", str(world["tmp"] / "again")]) == 0
    again = json.loads((world["tmp"] / "again" / "summary.json").read_text())["config"]
    assert again["concepts"]["annotations"] == config["concepts"]["annotations"]
