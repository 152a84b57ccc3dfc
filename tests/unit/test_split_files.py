"""Published split lists (ImageNet-LT text files, Flowers102 .mat files, NICO++ metadata CSV) and
per-image groups: exactly the listed images land in each split, groups are read from lists and
from <class>/<context>/ folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysynth import columns as col
from raysynth.config.schema import DataConfig, SplitFilesConfig
from raysynth.data import load_dataset, make_splits, read_real_splits, write_real
from raysynth.data.split_files import describe_splits
from raysynth.errors import ConfigError, DataError


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


def _split_paths(data, splits) -> dict[str, set[str]]:
    return {s: {data.sources[i] for i in getattr(splits, s)} for s in ("train", "pool", "val",
                                                                      "test")}


@pytest.fixture()
def lt_tree(tmp_path: Path):
    """An ImageNet-LT style tree: train/<wnid>/x.png, val/<wnid>/…, three path-label lists, and
    decoys on disk that no list names."""
    listed = {"train": [], "val": [], "test": []}
    for c, wnid in enumerate(("n01", "n02")):
        for split, n in (("train", 5 - 2 * c), ("val", 1), ("test", 2)):
            for i in range(n):
                rel = f"{'train' if split == 'train' else 'val'}/{wnid}/{split}{i}.png"
                _img(tmp_path / rel, 10 * c + i)
                listed[split].append(f"{rel} {c}")
        _img(tmp_path / f"train/{wnid}/decoy.png", 200)
    for split, lines in listed.items():
        (tmp_path / f"LT_{split}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "names.txt").write_text("tench\ngoldfish\n")
    return tmp_path, listed


def _lt_cfg(root: Path, **kw) -> DataConfig:
    sf = SplitFilesConfig(format="path_label", train="LT_train.txt", val="LT_val.txt",
                          test="LT_test.txt", names="names.txt", **kw.pop("sf", {}))
    return DataConfig(**{"source": "imagefolder", "path": str(root), "split_files": sf,
                         "pool_per_class": 0, **kw})


def test_path_label_lists_put_exactly_the_listed_images_in_each_split(lt_tree):
    root, listed = lt_tree
    data = load_dataset(_lt_cfg(root, many_threshold=2, few_threshold=2))
    assert data.class_names == ["tench", "goldfish"]
    splits = make_splits(data, _lt_cfg(root, many_threshold=2, few_threshold=2), seed=0)
    got = _split_paths(data, splits)
    for split in ("train", "val", "test"):
        assert got[split] == {line.split()[0] for line in listed[split]}
    assert got["pool"] == set()
    assert splits.counts(data.labels, 2)["train"] == [5, 3]
    assert splits.groups == {"many": [0, 1], "medium": [], "few": []}
    labels = {data.sources[i]: int(data.labels[i]) for i in range(len(data))}
    assert labels["val/n02/test1.png"] == 1 and labels["train/n01/train4.png"] == 0


def test_few_shot_k_is_drawn_from_the_train_list_only(lt_tree):
    root, listed = lt_tree
    cfg = _lt_cfg(root, k=2, pool_per_class=1, sf={"sample_k": True})
    data = load_dataset(cfg)
    splits = make_splits(data, cfg, seed=3)
    got = _split_paths(data, splits)
    train_list = {line.split()[0] for line in listed["train"]}
    assert got["train"] <= train_list and got["pool"] <= train_list
    assert not got["train"] & got["pool"]
    assert splits.counts(data.labels, 2)["train"] == [2, 2]
    assert splits.counts(data.labels, 2)["pool"] == [1, 1]
    assert got["test"] == {line.split()[0] for line in listed["test"]}
    # deterministic, and a smaller k is a prefix of the same shuffle
    again = make_splits(data, cfg, seed=3)
    assert np.array_equal(again.train, splits.train)
    small = make_splits(data, _lt_cfg(root, k=1, pool_per_class=1, sf={"sample_k": True}), 3)
    assert _split_paths(data, small)["train"] <= got["train"]
    with pytest.raises(DataError, match="'goldfish' has 3 listed train images but needs 4"):
        make_splits(data, _lt_cfg(root, k=3, pool_per_class=1, sf={"sample_k": True}), 3)


def test_flowers102_mat_files(tmp_path: Path):
    from scipy.io import savemat

    labels = [1, 1, 2, 2, 1, 2, 1, 2]  # image i+1 has labels[i]
    for i in range(1, 9):
        _img(tmp_path / f"jpg/image_{i:05d}.jpg", i)
    savemat(tmp_path / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(tmp_path / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2, 4]]),
                                     "tstid": np.array([[5, 6, 7, 8]])})
    cfg = DataConfig(source="imagefolder", path=str(tmp_path), pool_per_class=0,
                     split_files=SplitFilesConfig(format="flowers102"))
    data = load_dataset(cfg)
    splits = make_splits(data, cfg, seed=0)
    got = _split_paths(data, splits)
    assert got["train"] == {"jpg/image_00001.jpg", "jpg/image_00003.jpg"}
    assert got["val"] == {"jpg/image_00002.jpg", "jpg/image_00004.jpg"}
    assert got["test"] == {f"jpg/image_{i:05d}.jpg" for i in (5, 6, 7, 8)}
    lab = {data.sources[i]: int(data.labels[i]) for i in range(len(data))}
    assert lab["jpg/image_00003.jpg"] == 1 and lab["jpg/image_00005.jpg"] == 0
    bad = DataConfig(source="imagefolder", path=str(tmp_path),
                     split_files=SplitFilesConfig(format="flowers102", setid="imagelabels.mat"))
    with pytest.raises(DataError, match="lacks trnid, valid, tstid"):
        load_dataset(bad)


@pytest.fixture()
def nico_csv(tmp_path: Path):
    lines = ["filename,y,a,split"]
    for i, (y, a, split) in enumerate([(0, "rock", 0), (0, "rock", 0), (0, "water", 0),
                                       (1, "rock", 0), (1, "water", 0), (1, "water", 0),
                                       (0, "water", 1), (1, "rock", 2), (0, "rock", 2)]):
        lines.append(f"img/{i}.png,{y},{a},{split}")
        _img(tmp_path / f"img/{i}.png", i)
    (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_csv_lists_give_groups_and_splits_and_survive_the_run_directory(nico_csv, tmp_path):
    cfg = DataConfig(source="imagefolder", path=str(nico_csv), pool_per_class=0,
                     split_files=SplitFilesConfig(format="csv", metadata="meta.csv"))
    data = load_dataset(cfg)
    assert data.group_names == ["rock", "water"]
    by_src = dict(zip(data.sources, data.group))
    assert by_src["img/2.png"] == "water" and by_src["img/7.png"] == "rock"
    splits = make_splits(data, cfg, seed=0)
    assert _split_paths(data, splits)["test"] == {"img/7.png", "img/8.png"}
    run = tmp_path / "run"
    write_real(run, data, splits)
    back, back_splits = read_real_splits(run)
    assert dict(zip(back.sources, back.group)) == by_src
    assert len(back_splits.train) == 6


def test_integer_group_ids_are_named_by_the_group_names_file(nico_csv):
    meta = (nico_csv / "meta.csv").read_text().replace(",rock,", ",0,").replace(",water,", ",1,")
    (nico_csv / "meta_ids.csv").write_text(meta)
    (nico_csv / "contexts.txt").write_text("rock\nwater\n")
    cfg = DataConfig(source="imagefolder", path=str(nico_csv), pool_per_class=0,
                     split_files=SplitFilesConfig(format="csv", metadata="meta_ids.csv",
                                                  group_names="contexts.txt"))
    assert dict(zip(load_dataset(cfg).sources, load_dataset(cfg).group))["img/2.png"] == "water"


def test_parquet_rows_are_matched_by_path(nico_csv, tmp_path):
    rows = [(f"img/{i}.png", (nico_csv / f"img/{i}.png").read_bytes()) for i in range(9)]
    rows.append(("img/unlisted.png", rows[0][1]))
    table = pa.table({col.PATH: [r[0] for r in rows], col.IMAGE: [r[1] for r in rows],
                      col.LABEL: [0] * len(rows)})
    pq.write_table(table, tmp_path / "data.parquet")
    cfg = DataConfig(source="parquet", path=str(tmp_path / "data.parquet"), pool_per_class=0,
                     split_files=SplitFilesConfig(format="csv", metadata=str(nico_csv / "meta.csv")))
    data = load_dataset(cfg)
    assert sorted(data.sources) == sorted(f"img/{i}.png" for i in range(9))
    assert make_splits(data, cfg, 0).counts(data.labels, 2)["val"] == [1, 0]


def test_group_from_context_folders(tmp_path: Path):
    for cls in ("cat", "dog"):
        for ctx, n in (("autumn", 2), ("rock", 1)):
            for i in range(n):
                _img(tmp_path / cls / ctx / f"{i}.png", i)
    _img(tmp_path / "cat" / "loose.png", 9)
    data = load_dataset(DataConfig(source="imagefolder", path=str(tmp_path), group="folder"))
    got = sorted(zip([data.class_names[y] for y in data.labels], data.group))
    assert got == [("cat", ""), ("cat", "autumn"), ("cat", "autumn"), ("cat", "rock"),
                   ("dog", "autumn"), ("dog", "autumn"), ("dog", "rock")]
    flat = load_dataset(DataConfig(source="imagefolder", path=str(tmp_path)))
    assert set(flat.group) == {""}


def test_bad_split_files_are_clear_errors(lt_tree):
    root, _ = lt_tree
    (root / "bad.txt").write_text("train/n01/train0.png zero\n")
    with pytest.raises(DataError, match=r"bad.txt:1: expected '<relative path> <integer label>'"):
        load_dataset(DataConfig(source="imagefolder", path=str(root), split_files=SplitFilesConfig(
            format="path_label", train="bad.txt")))
    with pytest.raises(DataError, match="missing.txt does not exist"):
        load_dataset(DataConfig(source="imagefolder", path=str(root), split_files=SplitFilesConfig(
            format="path_label", train="missing.txt")))
    with pytest.raises(ConfigError, match="data.split_files.train"):
        SplitFilesConfig(format="path_label")
    with pytest.raises(ConfigError, match="imagefolder or parquet"):
        DataConfig(split_files=SplitFilesConfig(format="flowers102"))


def test_describe_splits_names_the_files(lt_tree):
    root, _ = lt_tree
    lines = describe_splits(_lt_cfg(root))
    assert lines[0].startswith("splits: read from path_label split files")
    assert f"  train: {root / 'LT_train.txt'}" in lines
    assert describe_splits(DataConfig())[0].startswith("splits: carved per class from digits")


RECIPES = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))
LISTED = {"imagenet-lt-feedback": "ImageNet_LT_test.txt", "nico-feedback": "metadata_nicopp.csv",
          "flowers102-diffcoremix": "setid.mat"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates_and_says_which_splits_it_reads(path):
    from raysynth.config import build_config

    cfg = build_config(config_file=path)
    text = "\n".join(describe_splits(cfg.data))
    if path.stem == "nico-feedback":
        assert "groups: the split list's group column" in text and "nico_contexts.txt" in text
    if path.stem in LISTED:
        assert "split files" in text and LISTED[path.stem] in text
    else:
        assert text.startswith("splits: carved per class")


def test_dry_run_prints_the_listed_splits(lt_tree, capsys):
    from raysynth.cli import main

    root, _ = lt_tree
    sets = {"data.source": "imagefolder", "data.path": str(root), "data.pool_per_class": 0,
            "data.split_files.format": "path_label", "data.split_files.train": "LT_train.txt",
            "data.split_files.val": "LT_val.txt", "data.split_files.test": "LT_test.txt",
            "data.split_files.names": "names.txt", "filter.enabled": "false"}
    argv = ["run", "--dry-run"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "splits: read from path_label split files" in out
    assert f"  test: {root / 'LT_test.txt'}" in out
    assert "  train: 8 images, per class [5, 3]" in out
    assert "  test: 4 images, per class [2, 2]" in out
