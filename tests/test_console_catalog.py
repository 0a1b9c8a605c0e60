"""The demo shop's item titles fit their category, and renaming them left the
purchases as they were (the same seed draws the same numbers)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from recommender.data.synthetic import CATEGORIES, DESCRIPTORS, VARIANTS, generate_shop

# The purchases each preset made before the titles were renamed (sha256 of
# pandas' row hashes of the transactions frame, first 16 hex digits).
PINNED = {
    ("demo", 0): "8c24b00d7efdcf10",
    ("grocery", 1): "c5ac7e9c7ebf0c13",
    ("fashion", 0): "ce5f46f9d101fe88",
}


def _digest(frame: pd.DataFrame) -> str:
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hashlib.sha256(rows).hexdigest()[:16]


@pytest.mark.parametrize(("preset", "seed"), sorted(PINNED))
def test_renamed_titles_leave_the_purchases_unchanged(preset, seed):
    shop = generate_shop(preset, seed=seed)
    assert _digest(shop.transactions) == PINNED[(preset, seed)]


def test_every_title_is_a_descriptor_a_noun_and_a_variant_of_its_own_category():
    cat = generate_shop("demo", seed=0).catalog
    assert cat["title"].is_unique
    for title, category in zip(cat["title"], cat["category"], strict=True):
        fits = [
            (word, noun)
            for word in DESCRIPTORS[category]
            for noun in CATEGORIES[category][0]
            if title.startswith(f"{word} {noun}")
            and title[len(f"{word} {noun}") :] in VARIANTS[noun]
        ]
        assert fits, f"{title!r} does not read as an item of {category!r}"
    # the words that gave the old titles away are gone from the coffee shelf
    coffee = cat.loc[cat["category"] == "Coffee & Tea", "title"]
    assert not coffee.str.contains("Headphones|Sport|Bold|Small|Large").any()
    headphones = cat.loc[cat["title"].str.contains("Headphones"), "title"]
    assert not headphones.str.contains(r"\d+(?:g|kg)\b").any()


def test_lists_keep_the_lengths_the_draws_depend_on():
    # rng.integers(n) draws a different stream for a different n
    assert {len(v) for v in DESCRIPTORS.values()} == {16}
    assert {len(v) for v in VARIANTS.values()} == {8}
    assert {len(nouns) for nouns, _ in CATEGORIES.values()} == {5}
    assert set(DESCRIPTORS) == set(CATEGORIES)
