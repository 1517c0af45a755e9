"""The image-prefix KV cache: a further question about an image runs only its own tokens through
layers 0..k, and early exit reads the same values as without the cache."""

from __future__ import annotations

import pytest
import torch

from models.tiny import BUILDERS, chat_prompts, tiny_images
from superneurons.capture import prepare_inputs
from superneurons.data.prompts import Prompter
from superneurons.early_exit import early_exit_activations
from superneurons.image_cache import ImageFeatureCache
from superneurons.models.adapters import SITES, adapter_for
from superneurons.prefix_cache import PrefixKVCache, image_comes_first

SUPPORTED = ["llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def _inputs(tiny, images, questions):
    return prepare_inputs(tiny.processor, images, chat_prompts(tiny.processor, questions))


def _assert_same(cached, plain):
    assert cached.keys() == plain.keys()
    for key, value in plain.items():
        torch.testing.assert_close(cached[key], value, atol=1e-5, rtol=1e-5)


def _layer0_lengths(tiny) -> list[int]:
    """The number of positions each forward runs through decoder layer 0."""
    seen: list[int] = []
    layer = adapter_for(tiny.model).decoder_layers(tiny.model)[0]
    layer.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append((args or [kwargs["hidden_states"]])[0].shape[1]),
        with_kwargs=True,
    )
    return seen


def _vision_calls(tiny) -> list:
    calls: list = []
    tower = getattr(tiny.model.model, "visual", None) or tiny.model.model.vision_tower
    tower.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.fixture(scope="module", params=SUPPORTED)
def tiny(request):
    return BUILDERS[request.param]()


def test_further_questions_run_only_their_own_tokens_and_read_the_same_values(tiny):
    a, b, c = tiny_images(3, tiny.image_size, seed=3)
    cache = PrefixKVCache(max_bytes=2**24)
    rounds = [
        # (images, questions, sites' layers, expected (hits, misses) after the round)
        ([a, b], ["is there a red cube ?", "how many ?"], [0, 1], (0, 2)),
        # a and b again, with other questions of other lengths, and a new image c twice
        (
            [a, c, b, a, c],
            ["is it big ?", "what colour is the shiny sphere ?", "x ?", "and a cube ?", "y ?"],
            [0, 1],
            (3, 4),
        ),
        # a deeper exit than the cache holds: those prompts run whole again
        ([b, a], ["is it big and red ?", "is it ?"], [0, 2], (3, 6)),
        ([a, b], ["is there a red cube ?", "how many ?"], [1, 2], (5, 6)),
    ]
    lengths, vision = _layer0_lengths(tiny), _vision_calls(tiny)
    for images, questions, layers, counts in rounds:
        inputs = _inputs(tiny, images, questions)
        needed = {site: layers for site in SITES}
        plain = early_exit_activations(tiny.model, inputs, needed)
        lengths.clear(), vision.clear()
        _assert_same(cache.activations(tiny.model, inputs, needed), plain)
        assert (cache.hits, cache.misses) == counts
    # The last round hit for every row: the vision tower did not run, and layer 0 saw only the
    # questions' tokens and the end of the template, not the image's.
    end = getattr(tiny.model.config, adapter_for(tiny.model).image_end_token)
    ids = inputs["input_ids"]
    longest_suffix = max(ids.shape[1] - 1 - int((row == end).nonzero().max()) for row in ids)
    assert vision == [] and lengths == [longest_suffix]
    assert len(cache) == 3 and cache.bytes > 0


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen3_vl"])
def test_prefixes_of_different_lengths_share_a_batch(name):
    tiny = BUILDERS[name]()
    size = tiny.processor.image_processor.size
    size["longest_edge"] = 4 * size["shortest_edge"]  # up to 4× the image tokens
    small, large = tiny_images(1, tiny.image_size, seed=1) + tiny_images(1, 2 * tiny.image_size)
    needed = {site: [0, 1] for site in SITES}
    cache = PrefixKVCache(max_bytes=2**24)
    for questions in (["is it red ?", "how many cubes are there ?"], ["a ?", "is it a cube ?"]):
        inputs = _inputs(tiny, [small, large], questions)
        plain = early_exit_activations(tiny.model, inputs, needed)
        _assert_same(cache.activations(tiny.model, inputs, needed), plain)
    spans = [entry[0][0].shape[1] for entry in cache._entries._entries.values()]
    assert len(set(spans)) == 2 and cache.hits == 2  # the large image has more tokens


def test_the_cache_keeps_within_its_bytes_least_recently_used_first():
    tiny = BUILDERS["llava"]()
    images = tiny_images(3, tiny.image_size, seed=5)
    needed = {"resid": [1]}
    probe = PrefixKVCache(max_bytes=2**24)
    probe.activations(tiny.model, _inputs(tiny, images[:1], ["q ?"]), needed)
    one = probe.bytes  # one image's prefix, layers 0 and 1
    cache = PrefixKVCache(max_bytes=2 * one)
    cache.activations(tiny.model, _inputs(tiny, images, ["a ?", "b ?", "c ?"]), needed)
    assert len(cache) == 2 and cache.bytes == 2 * one
    cache.activations(tiny.model, _inputs(tiny, [images[2], images[1]], ["d ?", "e ?"]), needed)
    assert cache.hits == 2  # the two most recent were kept
    none = PrefixKVCache(max_bytes=0)
    none.activations(tiny.model, _inputs(tiny, images, ["a ?", "b ?", "c ?"]), needed)
    assert (len(none), none.hits, none.misses) == (0, 0, 0)


def test_it_composes_with_the_image_feature_cache():
    tiny = BUILDERS["llava"]()
    a, b = tiny_images(2, tiny.image_size, seed=7)
    needed = {site: [0, 1] for site in SITES}
    features, prefixes = ImageFeatureCache(2**24), PrefixKVCache(2**24)
    for questions in (["is it red ?", "how many ?"], ["a cube ?", "two ?"]):
        inputs = _inputs(tiny, [a, b], questions)
        plain = early_exit_activations(tiny.model, inputs, needed)
        _assert_same(prefixes.activations(tiny.model, inputs, needed, features.inject), plain)
    # Round 1 ran whole through the feature cache (2 misses); round 2 hit the prefixes, and so
    # never asked for the images' features.
    assert (features.misses, features.hits, prefixes.misses, prefixes.hits) == (2, 0, 2, 2)


@pytest.mark.parametrize("name", ["idefics3", "smolvlm"])
def test_architectures_without_an_image_end_token_run_whole(name):
    tiny = BUILDERS[name]()
    assert adapter_for(tiny.model).image_end_token is None
    inputs = _inputs(tiny, tiny_images(2, tiny.image_size, seed=3), ["a ?", "b ?"])
    needed = {"resid": [0, 1]}
    cache = PrefixKVCache(max_bytes=2**24)
    for _ in range(2):
        _assert_same(cache.activations(tiny.model, inputs, needed),
                     early_exit_activations(tiny.model, inputs, needed))  # fmt: skip
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)


def test_right_padded_inputs_run_whole():
    tiny = BUILDERS["llava"]()
    prompts = chat_prompts(tiny.processor, ["a ?", "is there a cube ?"])
    tiny.processor.tokenizer.padding_side = "right"
    try:
        inputs = tiny.processor(
            images=tiny_images(2, tiny.image_size), text=prompts, return_tensors="pt", padding=True
        )
    finally:
        tiny.processor.tokenizer.padding_side = "left"
    assert not inputs["attention_mask"][:, -1].all()
    cache = PrefixKVCache(max_bytes=2**24)
    cache.activations(tiny.model, inputs, {"resid": [0]})
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)


@pytest.mark.parametrize("name", SUPPORTED)
def test_image_comes_first_in_the_tiny_templates(name):
    tiny = BUILDERS[name]()
    assert image_comes_first(tiny.processor, Prompter.for_model("plain", name))


def test_the_embedded_default_asks_before_the_image():
    from superneurons.models.loading import load_model

    loaded = load_model(None)
    prompter = Prompter.for_model("plain", adapter_for(loaded.model).name)
    assert not image_comes_first(loaded.processor, prompter)
