"""The controlled study's data (paper 000 §4.1 on the bundled digits): what each kind of
"synthetic" image is, that none overlaps an evaluation image, and the paper's counts."""

import numpy as np
import pytest

from raysynth.data import load_dataset, to_tensor_array
from raysynth.errors import ConfigError, DataError
from raysynth.flows.controlled import StudySpec, build_study_config, build_study_data
from raysynth.train.protocol import draw_synthetic


def _digits_by_bytes(cfg):
    images = load_dataset(cfg.data)
    x = to_tensor_array(images.images, images.channels)
    return {xi.tobytes(): int(yi) for xi, yi in zip(x, images.labels)}, x


def _labels_of(arr, lookup):
    return [lookup.get(np.ascontiguousarray(a).tobytes()) for a in arr]


def test_swapped_study_uses_the_next_class_images_and_the_papers_counts():
    spec = StudySpec(("0", "9"), "swapped", 16)
    cfg = build_study_config(spec, {})
    assert cfg.data.val_per_class == 64  # the paper's MNIST validation size
    assert cfg.data.pool_per_class == 32 and cfg.classifier.per_class == 16  # resampled
    val, test = build_study_data(spec, cfg)
    lookup, _ = _digits_by_bytes(cfg)
    assert val.synthetic_per_class == 8  # k/2, drawn afresh per encoder run
    assert np.bincount(val.eval.y).tolist() == [64, 64]
    assert np.bincount(test.eval.y).tolist() == [30, 30]
    # Every leftover digit is a synthetic image: 0 has 178 digits, 9 has 180, splits use 142.
    assert np.bincount(val.synthetic.y).tolist() == [36, 36]
    true = np.array(_labels_of(val.synthetic.x, lookup))
    assert (true == 1 - val.synthetic.y).all()  # class 0's synthetic images are 9s and back
    used = {a.tobytes() for part in (val.train, val.pool, val.eval, test.eval) for a in part.x}
    assert not used & {a.tobytes() for a in val.synthetic.x}
    drawn = draw_synthetic(val, seed=3)
    assert np.bincount(drawn.synthetic.y).tolist() == [8, 8]
    assert draw_synthetic(val, seed=4).synthetic.x.tobytes() != drawn.synthetic.x.tobytes()


def test_same_class_and_morph_images():
    same = StudySpec(("3", "5", "8"), "same-class", 8, n_synthetic=6)
    cfg = build_study_config(same, {})
    val, _ = build_study_data(same, cfg)
    lookup, _ = _digits_by_bytes(cfg)
    assert val.synthetic_per_class == 6
    assert _labels_of(val.synthetic.x, lookup) == val.synthetic.y.tolist()

    morph = StudySpec(("0", "9"), "morph:0.7,0.3", 16)
    mcfg = build_study_config(morph, {})
    val_m, _ = build_study_data(morph, mcfg)
    _, x = _digits_by_bytes(mcfg)
    images = load_dataset(mcfg.data)
    flat = x.reshape(len(x), -1).astype(np.float64)
    by_class = [flat[images.labels == c] for c in (0, 1)]
    for c, rho in ((0, 0.7), (1, 0.3)):
        a = rho * by_class[c]  # own class
        b = (1 - rho) * by_class[1 - c]  # the next class, cyclically
        rows = val_m.synthetic.x[val_m.synthetic.y == c].reshape(-1, x[0].size)
        for m in rows[:10]:
            d = m[None, :] - a  # [A, D]
            dist = (d**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * d @ b.T
            assert dist.min() < 1e-8  # m = ρ·(a digit of c) + (1-ρ)·(a digit of the next class)


def test_too_few_digits_left_for_synthetic_images_is_a_clear_error():
    spec = StudySpec(("0", "9"), "swapped", 44)  # 30 test + 64 val + 32 pool + 44 train
    with pytest.raises(DataError, match="8 images per class are left .* each encoder run draws 22"):
        build_study_data(spec, build_study_config(spec, {}))


def _digits_parquet(path):
    """The digits as a Parquet table of user data: PNG bytes and class names, digits order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raysynth.config.schema import DataConfig

    images = load_dataset(DataConfig())
    names = [images.class_names[y] for y in images.labels]
    pq.write_table(pa.table({"image": images.images, "class_name": names}), path)


def test_parquet_study_data_equals_the_digits_study_data(tmp_path):
    from raysynth.flows.controlled import data_source

    _digits_parquet(tmp_path / "digits.parquet")
    digits = StudySpec(("9", "0"), "morph:0.7,0.3", 8)
    user = StudySpec(("9", "0"), "morph:0.7,0.3", 8, data=str(tmp_path / "digits.parquet"))
    cfg = build_study_config(user, {})
    assert (cfg.data.source, cfg.data.classes) == ("parquet", ("9", "0"))
    for a, b in zip(build_study_data(digits, build_study_config(digits, {})),
                    build_study_data(user, cfg)):
        for part in ("train", "synthetic", "pool", "eval"):
            np.testing.assert_array_equal(getattr(a, part).x, getattr(b, part).x)
            np.testing.assert_array_equal(getattr(a, part).y, getattr(b, part).y)
    assert data_source(str(tmp_path)) == "parquet"  # a folder holding Parquet files
    assert data_source("s3://bucket/set/") == "parquet"
    (tmp_path / "cat").mkdir()
    assert data_source(str(tmp_path / "cat")) == "imagefolder"
    with pytest.raises(ConfigError, match="--source needs --data"):
        StudySpec(("0", "9"), source="parquet")
