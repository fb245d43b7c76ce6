"""Which dataset caches a job's trainer writes (scheduler rule 6). Pure."""

from __future__ import annotations

from dpd.jobs.dataset_cache import cache_keys, spec_cache_keys


def test_one_key_per_training_directory_under_the_models_cache_folder() -> None:
    dataset = {"directories": [{"path": "/data/cats/"}, {"path": "/data/./dogs"}]}
    assert cache_keys("sdxl", dataset) == {"/data/cats/cache/sdxl", "/data/dogs/cache/sdxl"}


def test_a_model_with_its_own_cache_name_uses_it() -> None:
    keys = cache_keys("hunyuan_video_15", {"directories": [{"path": "/data/clips"}]})
    assert keys == {"/data/clips/cache/hunyuan_video_1.5"}


def test_the_same_directory_for_two_models_is_two_caches() -> None:
    dataset = {"directories": [{"path": "/data/cats"}]}
    assert cache_keys("sdxl", dataset).isdisjoint(cache_keys("flux", dataset))


def test_documents_without_directories_have_no_keys() -> None:
    assert spec_cache_keys(None) == frozenset()
    assert spec_cache_keys({"model_type": "sdxl"}) == frozenset()
    assert spec_cache_keys({"model_type": "sdxl", "dataset": {"directories": [{}]}}) == frozenset()
    doc = {"model_type": "wan", "dataset": {"directories": [{"path": "/v"}]}}
    assert spec_cache_keys(doc) == {"/v/cache/wan"}
