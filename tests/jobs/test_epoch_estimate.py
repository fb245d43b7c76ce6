"""Steps per epoch from the dataset (reference §4.5), against cases worked out by hand."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dpd.jobs.epoch_estimate import (
    AR_UNKNOWN,
    EMPTY_DATASET,
    FRAMES_UNKNOWN,
    DirectoryListing,
    MediaFile,
    estimate_steps_per_epoch,
)
from dpd.jobs.spec import JobSpec


def spec(directories: list[dict[str, Any]], config: Any = None, **dataset: Any) -> JobSpec:
    return JobSpec(
        task_id="t",
        model_type="wan",
        description="",
        gpu_ids=None,
        priority=0,
        queue=False,
        resume_from_checkpoint=None,
        min_memory_mb=None,
        required_gpus=1,
        dataset={"resolutions": [512], **dataset, "directories": directories},
        config={"epochs": 2, **(config or {})},
    )


def images(path: str, captioned: int, bare: int = 0, **media: Any) -> DirectoryListing:
    files = [MediaFile(f"c{i}.png", 1, **media) for i in range(captioned)]
    files += [MediaFile(f"b{i}.png", 0, **media) for i in range(bare)]
    return DirectoryListing(path, tuple(files))


def test_simple_case_is_floor_of_captioned_images_over_the_global_batch() -> None:
    job = spec([{"path": "/d"}], {"micro_batch_size_per_gpu": 2})
    # 10 captioned images (2 without a caption are skipped), global batch 2: 5
    result = estimate_steps_per_epoch(job, [images("/d", 10, bare=2)], 1)
    assert (result.steps_per_epoch, result.exact, result.error) == (5, True, None)
    job = spec([{"path": "/d"}], {"micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2})
    # global batch 1 x 2 x DP 2 = 4: floor(10 / 4) = 2
    assert estimate_steps_per_epoch(job, [images("/d", 10, bare=2)], 2).steps_per_epoch == 2


def test_repeats_are_truncated_per_directory_then_summed_per_bucket() -> None:
    job = spec([{"path": "/a", "num_repeats": 3}, {"path": "/b", "num_repeats": 1.5}])
    listings = [images("/a", 5), images("/b", 4)]
    # one bucket: 5 x 3 + int(4 x 1.5) = 21 entries, batch 1
    assert estimate_steps_per_epoch(job, listings, 1).steps_per_epoch == 21
    job = spec([{"path": "/a"}, {"path": "/b"}], num_repeats=0.5)
    # int(5 x 0.5) + int(3 x 0.5) = 2 + 1, not int(8 x 0.5) = 4
    assert estimate_steps_per_epoch(job, [images("/a", 5), images("/b", 3)], 1).steps_per_epoch == 3


def test_each_resolution_is_a_bucket_of_its_own_with_its_batch_size() -> None:
    job = spec([{"path": "/d"}], {"micro_batch_size_per_gpu": 3}, resolutions=[512, 768])
    # two buckets of 10: 3 + 3 (one bucket of 20 would give 6 as well; 11 tells them apart)
    assert estimate_steps_per_epoch(job, [images("/d", 11)], 1).steps_per_epoch == 6
    job = spec(
        [{"path": "/d"}],
        {"micro_batch_size_per_gpu": [[512, 4], [768, 2]]},
        resolutions=[512, [768, 768]],
    )
    # 512: floor(10 / 4) = 2; 768: floor(10 / 2) = 5
    assert estimate_steps_per_epoch(job, [images("/d", 10)], 1).steps_per_epoch == 7
    job = spec([{"path": "/d"}], {"micro_batch_size_per_gpu": 3}, resolutions=[512, 512.0])
    # the trainer drops a repeated resolution: one bucket, floor(10 / 3) = 3
    assert estimate_steps_per_epoch(job, [images("/d", 10)], 1).steps_per_epoch == 3


def test_videos_go_to_the_largest_frame_bucket_they_fill() -> None:
    job = spec(
        [{"path": "/v", "frame_buckets": [1, 33, 65]}],
        {"micro_batch_size_per_gpu": 2, "image_micro_batch_size_per_gpu": 1},
    )
    videos = [MediaFile(f"v{n}.mp4", 1, video=True, frames=n) for n in (40, 70, 100, 20, 33)]
    stills = [MediaFile(f"i{n}.png", 1) for n in range(3)]
    listing = DirectoryListing("/v", tuple(videos + stills))
    result = estimate_steps_per_epoch(job, [listing], 1)
    # 33: {40, 33} -> 1; 65: {70, 100} -> 1; 20 frames is too short; images 3 / 1 -> 3
    assert (result.steps_per_epoch, result.exact) == (5, True)
    unknown = DirectoryListing("/v", tuple(MediaFile(v.name, 1, video=True) for v in videos))
    result = estimate_steps_per_epoch(job, [unknown], 1)
    # frames unknown: all five in the 65 bucket, floor(5 / 2) = 2, and said to be a guess
    assert (result.steps_per_epoch, result.exact, result.reasons) == (2, False, (FRAMES_UNKNOWN,))


def test_videos_never_go_to_the_image_bucket() -> None:
    job = spec([{"path": "/v"}])  # frame_buckets defaults to [1]
    listing = DirectoryListing("/v", (MediaFile("v.mp4", 1, video=True), *images("/v", 2).files))
    result = estimate_steps_per_epoch(job, [listing], 1)
    assert (result.steps_per_epoch, result.exact) == (2, True)


def test_an_empty_dataset_is_zero_with_the_trainers_error() -> None:
    job = spec([{"path": "/d"}], {"micro_batch_size_per_gpu": 4})
    result = estimate_steps_per_epoch(job, [images("/d", 3, bare=5)], 1)
    assert (result.steps_per_epoch, result.exact) == (0, True)
    assert result.error == EMPTY_DATASET
    assert result.error == (
        "RuntimeError: Processed dataset was empty. "
        "Probably caused by rounding down for each size bucket."
    )
    result = estimate_steps_per_epoch(job, [DirectoryListing("/d", ())], 1)
    assert result.steps_per_epoch == 0
    assert result.error == "AssertionError: Directory /d had no images/videos!"


def test_captions_per_item_multiply_the_entries() -> None:
    job = spec([{"path": "/d", "cache_shuffle_num": 3}], {"micro_batch_size_per_gpu": 2})
    listing = DirectoryListing("/d", (MediaFile("a.png", 1), MediaFile("b.png", 2)))
    # (1 + 2 captions) x 3 shuffles = 9 entries, batch 2: 4
    assert estimate_steps_per_epoch(job, [listing], 1).steps_per_epoch == 4
    kept = spec([{"path": "/d"}], skip_empty_caption=False)
    assert estimate_steps_per_epoch(kept, [images("/d", 2, bare=3)], 1).steps_per_epoch == 5


def test_subsample_ratio_keeps_a_fraction_of_the_batches() -> None:
    job = spec([{"path": "/d"}], subsample_ratio=0.5)
    assert estimate_steps_per_epoch(job, [images("/d", 11)], 1).steps_per_epoch == 5


def test_ar_buckets_without_image_sizes_are_an_upper_bound_unless_batches_are_one() -> None:
    ar = {"enable_ar_bucket": True, "ar_buckets": [0.75, 1.0, [4, 3]]}
    job = spec([{"path": "/d"}], {"micro_batch_size_per_gpu": 2}, **ar)
    result = estimate_steps_per_epoch(job, [images("/d", 10)], 1)
    assert (result.steps_per_epoch, result.exact, result.reasons) == (5, False, (AR_UNKNOWN,))
    single = spec([{"path": "/d"}], {"micro_batch_size_per_gpu": 1}, **ar)
    assert estimate_steps_per_epoch(single, [images("/d", 10)], 1).exact is True
    sizes = [(768, 1024)] * 3 + [(1024, 1024)] * 3 + [(1024, 768)] * 4
    known = DirectoryListing(
        "/d", tuple(MediaFile(f"{i}.png", 1, size=s) for i, s in enumerate(sizes))
    )
    result = estimate_steps_per_epoch(job, [known], 1)
    # floor(3/2) + floor(3/2) + floor(4/2) = 4: the rounding down per AR bucket
    assert (result.steps_per_epoch, result.exact) == (4, True)


def test_a_cut_listing_or_an_unread_archive_is_an_estimate() -> None:
    job = spec([{"path": "/d"}])
    cut = DirectoryListing("/d", images("/d", 4).files, complete=False)
    result = estimate_steps_per_epoch(job, [cut], 1)
    assert (result.steps_per_epoch, result.exact) == (4, False)
    assert "stopped early" in result.reasons[0]
    tar = DirectoryListing("/d", (), unread=("tar archive /d/x.tar was not opened",))
    result = estimate_steps_per_epoch(job, [tar], 1)
    assert (result.steps_per_epoch, result.exact, result.error) == (0, False, EMPTY_DATASET)


@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    repeats=st.sampled_from([1, 2, 0.5, 1.5]),
    resolutions=st.lists(st.sampled_from([256, 512, 768, 1024]), min_size=1, max_size=3),
    mbs=st.integers(1, 4),
    gas=st.integers(1, 3),
    dp=st.integers(1, 3),
)
def test_images_without_ar_buckets_match_the_closed_form(
    counts: list[int], repeats: float, resolutions: list[int], mbs: int, gas: int, dp: int
) -> None:
    """Images, AR bucketing off: every resolution holds every directory's int(n x repeats)
    entries; steps = buckets x floor(sum / G)."""
    directories = [{"path": f"/d{i}", "num_repeats": repeats} for i in range(len(counts))]
    listings = [images(f"/d{i}", n, bare=1) for i, n in enumerate(counts)]
    config = {"micro_batch_size_per_gpu": mbs, "gradient_accumulation_steps": gas}
    job = spec(directories, config, resolutions=resolutions)
    entries = sum(int(n * repeats) for n in counts)
    expected = len(set(resolutions)) * (entries // (mbs * gas * dp))
    result = estimate_steps_per_epoch(job, listings, dp)
    assert (result.steps_per_epoch, result.exact) == (expected, True)


@given(
    dirs=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 3), st.sampled_from([1, 3, 0.5, 2.5])).filter(
            lambda d: d[0] + d[1] > 0
        ),  # a directory without media fails in both
        min_size=1,
        max_size=3,
    ),
    resolutions=st.lists(
        st.sampled_from([256, 512, [640, 480], 1024]), min_size=1, max_size=3, unique_by=str
    ),
    mbs=st.integers(1, 4),
    image_mbs=st.integers(1, 4),
    gas=st.integers(1, 3),
    dp=st.integers(1, 2),
    shuffles=st.integers(0, 2),
    keep_bare=st.booleans(),
)
def test_agrees_with_the_stand_in_trainer_on_images_without_ar_buckets(
    dirs: list[tuple[int, int, float]],
    resolutions: list[Any],
    mbs: int,
    image_mbs: int,
    gas: int,
    dp: int,
    shuffles: int,
    keep_bare: bool,
) -> None:
    """The stand-in (dpd.simulation) follows §4.5's simple case; the estimate must match it."""
    from dpd.simulation.diffusion_pipe import simconfig

    entries = [{"path": f"/d{i}", "num_repeats": r} for i, (_, _, r) in enumerate(dirs)]
    dataset = {"resolutions": resolutions, "cache_shuffle_num": shuffles}
    dataset["skip_empty_caption"] = not keep_bare
    config = {
        "micro_batch_size_per_gpu": mbs,
        "image_micro_batch_size_per_gpu": image_mbs,
        "gradient_accumulation_steps": gas,
    }
    job = spec(entries, config, **dataset)
    listings = [images(f"/d{i}", n, bare=b) for i, (n, b, _) in enumerate(dirs)]
    specs = simconfig.directory_specs({**dataset, "directory": entries})
    counts = [
        simconfig.DirectoryCount(s, n + (b if keep_bare else 0), 0)
        for s, (n, b, _) in zip(specs, dirs, strict=True)
    ]
    expected = simconfig.batches_per_epoch(counts, mbs, image_mbs, gas, dp)
    assert estimate_steps_per_epoch(job, listings, dp).steps_per_epoch == expected
