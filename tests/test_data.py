"""Input pipelines: embedded datasets, determinism, resumable iterators, augmentation, eval padding."""

import numpy as np
import pytest

from configs import base
from experiments import data, sources
from experiments.errors import ConfigError


def _config(**data_overrides):
    config = base.get_base_config()
    config.batch_size = 32
    for key, value in data_overrides.items():
        config.data[key] = value
    return config


@pytest.mark.parametrize(
    "name, shape, n_train, n_test",
    [("mnist5k", (28, 28, 1), 4000, 1000), ("digits", (8, 8, 1), 1438, 359)],
)
def test_embedded_split_is_fixed_and_stratified(name, shape, n_train, n_test):
    train, test, info = sources.embedded(name)
    assert info.image_shape == shape and info.num_classes == 10
    assert (len(train), len(test)) == (n_train, n_test)
    assert train.images.dtype == np.uint8 and train.images.max() > 200  # real pixels, full range
    counts = np.bincount(test.labels, minlength=10)
    assert counts.min() >= 0.8 * counts.max()  # class balance kept
    train2, _, _ = sources.embedded(name)
    np.testing.assert_array_equal(train.labels, train2.labels)
    # Train and test share no image.
    train_rows = {r.tobytes() for r in train.images}
    assert sum(r.tobytes() in train_rows for r in test.images) < 0.01 * len(test)


def test_batches_are_a_function_of_seed_and_step_and_resume_exactly():
    pipeline = data.build(_config(name="digits", augment="crop", crop_padding=2))
    it = pipeline.train_iterator()
    batches = [next(it) for _ in range(3)]
    state = it.get_state()
    after = next(it)
    resumed = pipeline.train_iterator(state)
    np.testing.assert_array_equal(next(resumed)["image"], after["image"])
    again = data.build(_config(name="digits", augment="crop", crop_padding=2)).train_iterator()
    for b in batches:
        np.testing.assert_array_equal(next(again)["image"], b["image"])
    other_seed = _config(name="digits", augment="crop", crop_padding=2)
    other_seed.seed = 1
    assert not np.array_equal(
        next(data.build(other_seed).train_iterator())["label"], batches[0]["label"]
    )


def test_epochs_reshuffle_and_cover_every_example():
    config = _config(name="digits")
    config.batch_size = 1438  # exactly one epoch per batch
    it = data.build(config).train_iterator()
    e1, e2 = next(it), next(it)
    assert sorted(e1["label"].tolist()) == sorted(e2["label"].tolist())
    assert not np.array_equal(e1["label"], e2["label"])


def test_batch_augmentation_crops_and_flips():
    images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
    crop = data._make_batch_transform("crop", 0)
    out = crop({"image": images, "label": np.zeros(2)}, np.random.default_rng(0))["image"]
    np.testing.assert_array_equal(out, images)  # padding 0: identity
    flip = data._make_batch_transform("crop_flip", 0)
    outs = [
        flip({"image": images, "label": None}, np.random.default_rng(s))["image"] for s in range(8)
    ]
    assert any(np.array_equal(o[0], images[0, :, ::-1]) for o in outs)
    padded = data._make_batch_transform("crop", 2)
    out = padded({"image": images + 1, "label": None}, np.random.default_rng(0))["image"]
    assert out.shape == images.shape and (out == 0).any()  # some zero padding shifted in


def test_eval_batches_pad_to_a_fixed_size_with_a_mask():
    config = _config(name="digits")
    config.eval_batch_size = 100
    batches = list(data.build(config).eval_batches())
    assert all(b["image"].shape == (100, 8, 8, 1) for b in batches)
    assert sum(int(b["mask"].sum()) for b in batches) == 359
    assert not batches[-1]["mask"][-1]


def test_center_crop_and_inception_crop_give_the_target_size():
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    assert data._center_crop(image, 32).shape == (32, 32, 3)
    crop = data._random_resized_crop(image, 24, np.random.default_rng(0))
    assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8


def test_unknown_augmentation_is_one_clear_error():
    with pytest.raises(ConfigError, match="config.data.augment.*allowed: none, crop"):
        data.build(_config(augment="mixup"))


def test_each_process_reads_its_rows_of_the_same_global_batches():
    """Two processes' pipelines together give exactly one process's batches (crop + flip included),
    and the same number of eval batches, a process past the end of the split yielding padding."""
    config = _config(name="digits", augment="crop_flip", crop_padding=2, max_eval_examples=20)
    config.batch_size, config.eval_batch_size = 12, 8  # eval: 8 + 8 + 4 rows
    whole = data.build(config, process_index=0, process_count=1)
    parts = [data.build(config, process_index=i, process_count=2) for i in range(2)]
    it, its = whole.train_iterator(), [p.train_iterator() for p in parts]
    for _ in range(3):
        want, got = next(it), [next(i) for i in its]
        assert len(got[0]["label"]) == 6
        for k in want:
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k], err_msg=k)
    state = its[1].get_state()
    assert state == it.get_state()  # the position is the global batch index
    np.testing.assert_array_equal(
        next(parts[1].train_iterator(state))["image"], next(it)["image"][6:]
    )
    want, got = list(whole.eval_batches()), [list(p.eval_batches()) for p in parts]
    assert len(want) == len(got[0]) == len(got[1]) == 3
    assert not got[1][-1]["mask"].any()  # past the end of the split: padding only
    for w, g0, g1 in zip(want, *got):
        for k in w:
            np.testing.assert_array_equal(np.concatenate([g0[k], g1[k]]), w[k], err_msg=k)
    config.batch_size = 13
    with pytest.raises(ConfigError, match="config.batch_size=13: must be a multiple of the 2"):
        data.build(config, process_index=0, process_count=2)


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
@pytest.mark.parametrize("process_count", [1, 2])
def test_in_memory_batches_equal_the_per_record_pipeline(monkeypatch, augment, process_count):
    """``experiments.array_batches`` (one gather per batch) gives grain's per-record batches bit for bit,
    across epoch boundaries, for every process's rows, and from a resumed position."""
    config = _config(name="digits", augment=augment, crop_padding=2)
    config.batch_size, config.seed = 100, 7  # 1438 records: epochs end inside batches 14, 28, 43
    assert data.array_batches.applies(data.open_sources(config.data)[0], augment, 0)
    fast = [data.build(config, i, process_count) for i in range(process_count)]
    monkeypatch.setattr(data.array_batches, "applies", lambda *args: False)
    slow = [data.build(config, i, process_count) for i in range(process_count)]
    for f, s in zip(fast, slow):
        fast_it, slow_it = f.train_iterator(), s.train_iterator()
        for t in range(45):
            want, got = next(slow_it), next(fast_it)
            assert got["image"].dtype == np.uint8 and got["label"].dtype == np.int32
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"batch {t} {k}")
        assert fast_it.get_state() == slow_it.get_state() == {"next_index": 45}
        at = {"next_index": 30}
        np.testing.assert_array_equal(
            next(f.train_iterator(at))["image"], next(s.train_iterator(at))["image"]
        )


@pytest.mark.parametrize("max_index", [1, 7, 3999, 4096, 59999, 65536, 1_281_166, 2**31 + 5])
def test_vectorised_index_shuffle_is_grains(max_index):
    """``array_batches.index_shuffle`` equals grain's own ``index_shuffle`` element for element (every
    cipher width those sizes reach: 16 to 32 bits), and is a permutation."""
    from grain.experimental import index_shuffle

    rng = np.random.default_rng(max_index)
    index = np.unique(
        np.r_[np.arange(min(max_index + 1, 200)), rng.integers(0, max_index + 1, 200)]
    )
    for seed in (0, 7, 2**32 - 1, 2**32 + 3):
        want = [
            index_shuffle(int(i), max_index=max_index, seed=seed % 2**32, rounds=4) for i in index
        ]
        got = data.array_batches.index_shuffle(index, max_index, seed)
        np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")
    whole = data.array_batches.index_shuffle(np.arange(4000), 3999, 5)
    assert sorted(whole) == list(range(4000))
