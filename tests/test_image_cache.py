"""The image-feature cache: an image seen before skips the vision tower and the projector, and
early exit reads the same values as without the cache."""

from __future__ import annotations

import pytest
import torch

from models.tiny import BUILDERS, chat_prompts, tiny_images
from superneurons.capture import prepare_inputs
from superneurons.early_exit import early_exit_activations
from superneurons.image_cache import ImageFeatureCache
from superneurons.models.adapters import SITES, adapter_for

QUESTIONS = ["is there a red cube ?", "how many ?", "is there a blue sphere ?"]


def _inputs(tiny, images):
    return prepare_inputs(tiny.processor, images, chat_prompts(tiny.processor, QUESTIONS))


def _calls(module: torch.nn.Module) -> list:
    seen: list = []
    module.register_forward_hook(lambda *_: seen.append(1))
    return seen


@pytest.fixture(scope="module")
def llava():
    return BUILDERS["llava"]()


def test_a_repeated_image_skips_the_vision_tower_and_reads_the_same_values(llava):
    a, b = tiny_images(2, llava.image_size, seed=3)
    inputs = _inputs(llava, [a, b, a])  # the first image asked twice
    needed = {site: [0, 2] for site in SITES}
    plain = early_exit_activations(llava.model, inputs, needed)
    cache = ImageFeatureCache(max_bytes=2**20)
    tower = _calls(llava.model.model.vision_tower)
    for round_ in range(2):
        cached = early_exit_activations(llava.model, cache.inject(llava.model, inputs), needed)
        for key, value in plain.items():
            torch.testing.assert_close(cached[key], value, atol=1e-5, rtol=1e-5)
        # Round 0: a and b computed in one tower call, a's second row reused; round 1: all hits.
        assert (cache.misses, cache.hits, len(tower)) == [(2, 1, 1), (2, 4, 1)][round_]
    assert len(cache) == 2 and cache.bytes > 0


def test_the_cache_keeps_within_its_bytes_least_recently_used_first(llava):
    images = tiny_images(3, llava.image_size, seed=5)
    probe = ImageFeatureCache(max_bytes=2**20)
    probe.inject(llava.model, _inputs(llava, images[:1] * 3))
    one = probe.bytes  # the features of one image
    cache = ImageFeatureCache(max_bytes=2 * one)
    cache.inject(llava.model, _inputs(llava, images))  # three images, room for two
    assert len(cache) == 2 and cache.bytes == 2 * one
    cache.inject(llava.model, _inputs(llava, [images[2], images[1], images[2]]))
    assert cache.hits == 3  # the two most recent were kept


def test_each_cached_image_holds_only_its_own_features(llava):
    # The model computes a batch's features as one tensor; a cached view of it would keep the
    # whole batch alive (the cache counts what each entry keeps alive).
    alone = ImageFeatureCache(max_bytes=2**20)
    alone.inject(llava.model, _inputs(llava, tiny_images(1, llava.image_size, seed=7) * 3))
    cache = ImageFeatureCache(max_bytes=2**20)
    cache.inject(llava.model, _inputs(llava, tiny_images(3, llava.image_size, seed=7)))
    assert len(alone) == 1 and len(cache) == 3
    assert cache.bytes == 3 * alone.bytes


@pytest.mark.parametrize("name", sorted(set(BUILDERS) - {"llava"}))
def test_architectures_without_injection_are_left_as_they_are(name):
    tiny = BUILDERS[name]()
    assert not adapter_for(tiny.model).caches_image_features
    inputs = _inputs(tiny, tiny_images(3, tiny.image_size, seed=3))
    cache = ImageFeatureCache(max_bytes=2**20)
    assert cache.inject(tiny.model, inputs) is inputs and (cache.hits, cache.misses) == (0, 0)
