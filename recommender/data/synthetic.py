"""Seeded generated shops with known structure (no network, no downloads).

The demo shop is what the README's first command trains on. It is built to
make model comparisons mean something:

* latent taste groups: each customer leans to one (sometimes two) of several
  groups, each group prefers its own items across categories, so
  collaborative filtering has structure to find beyond popularity;
* skewed (Zipf-like) item popularity inside each group;
* heterogeneous purchase rates (gamma-distributed) and churn after each order
  (beta-geometric), with customers acquired throughout the period, as in the
  BG/NBD story;
* consumables (coffee, pet food, detergent, ...) that a customer who adopts
  them rebuys on a personal cycle around the item's mean cycle.

Presets: ``demo`` (mixed shop), ``grocery`` (repeat-heavy) and ``fashion``
(large catalogue, almost no rebuys, seasonal new items). :func:`generate_interactions`
makes millions of rows quickly for benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CATEGORIES: dict[str, tuple[list[str], bool]] = {
    # name: (nouns, consumable category)
    "Coffee & Tea": (["Coffee Beans", "Ground Coffee", "Green Tea", "Espresso Pods", "Chai"], True),
    "Pet Supplies": (["Dog Food", "Cat Litter", "Cat Food", "Dog Treats", "Bird Seed"], True),
    "Household": (["Detergent", "Dish Soap", "Paper Towels", "Trash Bags", "Sponges"], True),
    "Personal Care": (["Shampoo", "Toothpaste", "Razor Blades", "Body Wash", "Deodorant"], True),
    "Snacks": (["Granola", "Dark Chocolate", "Trail Mix", "Rice Crackers", "Protein Bars"], True),
    "Books": (["Novel", "Cookbook", "Travel Guide", "Biography", "Poetry Collection"], False),
    "Kitchen": (["Chef Knife", "Cast Iron Pan", "Cutting Board", "Kettle", "Mixing Bowls"], False),
    "Electronics": (
        ["Headphones", "USB Charger", "Bluetooth Speaker", "Power Bank", "Webcam"],
        False,
    ),
    "Home Decor": (["Throw Pillow", "Candle", "Picture Frame", "Vase", "Wall Clock"], False),
    "Outdoor": (["Water Bottle", "Camping Mug", "Hiking Socks", "Headlamp", "Daypack"], False),
    "Clothing": (["T-Shirt", "Hoodie", "Jeans", "Sneakers", "Rain Jacket"], False),
    "Toys & Games": (["Puzzle", "Board Game", "Building Blocks", "Card Game", "Plush Toy"], False),
}
# A title is "<descriptor> <noun><variant>": the descriptor fits the category
# and the variant (a pack size, a cut, a format) fits the noun. Each list keeps
# the length of the draw it names (16 descriptors, 8 variants, 5 nouns), so a
# seed draws the same numbers and makes the same purchases as before; only
# the words differ.
# fmt: off
DESCRIPTORS: dict[str, list[str]] = {
    "Coffee & Tea": [
        "Organic", "Fair Trade", "Single Origin", "House Blend", "Decaf", "Morning", "Dark Roast",
        "Medium Roast", "Estate", "Mountain", "Smooth", "Rich", "Reserve", "Everyday", "Highland",
        "Velvet",
    ],
    "Pet Supplies": [
        "Grain-Free", "Senior", "Puppy & Kitten", "Salmon", "Chicken", "Lamb", "Natural", "Indoor",
        "Sensitive", "Active", "Everyday", "Premium", "Hypoallergenic", "Wholesome", "Farmhouse",
        "Ocean",
    ],
    "Household": [
        "Eco", "Lemon", "Unscented", "Lavender", "Heavy-Duty", "Sensitive", "Fresh Linen",
        "Everyday", "Plant-Based", "Ultra", "Citrus", "Ocean Breeze", "Original", "Bulk",
        "Compostable", "Pine",
    ],
    "Personal Care": [
        "Gentle", "Sensitive", "Fresh Mint", "Charcoal", "Aloe", "Coconut", "Unscented", "Sport",
        "Natural", "Whitening", "Tea Tree", "Oat", "Classic", "Travel", "Eucalyptus", "Cedarwood",
    ],
    "Snacks": [
        "Salted Caramel", "Honey Almond", "Sea Salt", "Cocoa", "Maple Pecan", "Cranberry",
        "Coconut", "Peanut Butter", "Vanilla", "Mixed Berry", "Spicy", "Original", "Organic",
        "Oat", "Hazelnut", "Cinnamon",
    ],
    "Books": [
        "Bestselling", "Illustrated", "Award-Winning", "Classic", "Pocket", "Collected",
        "Complete", "Essential", "Modern", "Nordic", "Coastal", "Mediterranean", "Little", "Big",
        "New", "Annotated",
    ],
    "Kitchen": [
        "Stainless", "Enamel", "Bamboo", "Professional", "Nonstick", "Ceramic", "Walnut", "Copper",
        "Everyday", "Compact", "Classic", "Japanese", "Oak", "Matte Black", "Cast", "Nordic",
    ],
    "Electronics": [
        "Wireless", "Noise-Cancelling", "Compact", "Fast-Charge", "Portable", "Pro", "Mini", "HD",
        "Waterproof", "Slim", "Studio", "Travel", "Rugged", "Smart", "Dual", "Ultra",
    ],
    "Home Decor": [
        "Linen", "Velvet", "Ceramic", "Rustic", "Boho", "Scandinavian", "Botanical", "Marble",
        "Woven", "Vintage", "Brass", "Terracotta", "Minimal", "Coastal", "Glass", "Oak",
    ],
    "Outdoor": [
        "Insulated", "Trail", "Lightweight", "Merino", "Alpine", "Rugged", "Summit", "Waterproof",
        "Packable", "Expedition", "Forest", "Canyon", "Ridge", "Trek", "Glacier", "Basecamp",
    ],
    "Clothing": [
        "Organic Cotton", "Slim-Fit", "Relaxed", "Classic", "Linen", "Vintage", "Striped",
        "Oversized", "Everyday", "Heritage", "Sport", "Merino", "Denim", "Urban", "Washed",
        "Cropped",
    ],
    "Toys & Games": [
        "Wooden", "Family", "Junior", "Classic", "Deluxe", "Travel", "Jumbo", "Magnetic",
        "Rainbow", "Dinosaur", "Space", "Ocean", "Jungle", "Puzzle-Box", "Party", "Starter",
    ],
}
VARIANTS: dict[str, list[str]] = {
    "Coffee Beans": [
        "", " 250g", " 500g", " 1kg", " 2kg", " Sampler", " Gift Tin", " Subscription Bag",
    ],
    "Ground Coffee": [
        "", " 250g", " 500g", " 1kg", " Filter Grind", " Espresso Grind", " Twin Pack",
        " Gift Tin",
    ],
    "Green Tea": [
        "", " 20 Bags", " 50 Bags", " 100 Bags", " Loose Leaf 100g", " Loose Leaf 250g",
        " Matcha 30g", " Gift Tin",
    ],
    "Espresso Pods": [
        "", " 10 Pods", " 30 Pods", " 50 Pods", " 100 Pods", " Variety Box", " Intense", " Lungo",
    ],
    "Chai": [
        "", " 20 Bags", " 50 Bags", " Concentrate 1L", " Latte Powder", " Loose Leaf 100g",
        " Spiced", " Gift Tin",
    ],
    "Dog Food": [
        "", " 2kg", " 6kg", " 12kg", " Wet 12 Cans", " Wet 24 Cans", " Small Breed",
        " Large Breed",
    ],
    "Cat Litter": [
        "", " 5L", " 10L", " 20L", " Clumping", " Silica", " Twin Pack", " Wood Pellets",
    ],
    "Cat Food": [
        "", " 1.5kg", " 4kg", " 10kg", " Wet 12 Pouches", " Wet 24 Pouches", " Indoor Formula",
        " Kitten Formula",
    ],
    "Dog Treats": [
        "", " 200g", " 500g", " 1kg", " Dental Chews", " Training Bites", " Jerky", " Biscuits",
    ],
    "Bird Seed": [
        "", " 1kg", " 2.5kg", " 5kg", " Wild Bird Mix", " Finch Mix", " Suet Cakes",
        " Feeder Refill",
    ],
    "Detergent": ["", " 1L", " 2L", " 40 Loads", " 80 Loads", " Pods 30", " Pods 60", " Refill"],
    "Dish Soap": [
        "", " 500ml", " 1L", " Refill 2L", " Tablets 30", " Tablets 60", " Twin Pack", " Foaming",
    ],
    "Paper Towels": [
        "", " 2 Rolls", " 4 Rolls", " 6 Rolls", " 8 Rolls", " 12 Rolls", " Half Sheets",
        " Jumbo Roll",
    ],
    "Trash Bags": [
        "", " 30L 20 Bags", " 30L 50 Bags", " 50L 20 Bags", " 50L 40 Bags", " 80L 20 Bags",
        " Drawstring", " Kitchen Roll",
    ],
    "Sponges": [
        "", " 3 Pack", " 6 Pack", " 10 Pack", " Scrub", " Non-Scratch", " Cellulose", " Dish Wand",
    ],
    "Shampoo": ["", " 250ml", " 500ml", " 1L", " Refill", " Bar", " Travel Size", " Twin Pack"],
    "Toothpaste": [
        "", " 75ml", " 100ml", " Twin Pack", " Triple Pack", " Travel Size", " Kids", " Tablets",
    ],
    "Razor Blades": [
        "", " 4 Pack", " 8 Pack", " 12 Pack", " Starter Kit", " Refills", " Sensitive",
        " Precision",
    ],
    "Body Wash": [
        "", " 250ml", " 400ml", " 750ml", " Refill 1L", " Travel Size", " Twin Pack", " Bar",
    ],
    "Deodorant": [
        "", " Roll-On", " Spray", " Stick", " Cream", " Twin Pack", " Travel Size", " Refill",
    ],
    "Granola": [
        "", " 350g", " 500g", " 1kg", " Clusters", " Low Sugar", " Family Size", " Snack Pack",
    ],
    "Dark Chocolate": [
        "", " 70%", " 85%", " 100g", " Bar Pack of 3", " Thins", " Buttons", " Gift Box",
    ],
    "Trail Mix": [
        "", " 200g", " 500g", " 1kg", " Snack Packs", " Resealable", " Family Size", " Lunch Box",
    ],
    "Rice Crackers": [
        "", " 100g", " 200g", " Multipack", " Thin", " Lightly Salted", " Seaweed", " Family Size",
    ],
    "Protein Bars": [
        "", " Single", " Pack of 6", " Pack of 12", " Box of 24", " Mini", " Crunchy", " Vegan",
    ],
    "Novel": [
        "", " Paperback", " Hardcover", " Large Print", " Box Set", " Signed Edition", " Ebook",
        " Audiobook",
    ],
    "Cookbook": [
        "", " Paperback", " Hardcover", " Spiral-Bound", " Gift Edition", " Ebook",
        " Weeknight Edition", " Volume 2",
    ],
    "Travel Guide": [
        "", " Paperback", " Pocket Edition", " 2025 Edition", " Map Pack", " Ebook",
        " Walking Edition", " Phrasebook",
    ],
    "Biography": [
        "", " Paperback", " Hardcover", " Large Print", " Illustrated Edition", " Ebook",
        " Audiobook", " Signed Edition",
    ],
    "Poetry Collection": [
        "", " Paperback", " Hardcover", " Pocket Edition", " Gift Edition", " Ebook", " Audiobook",
        " Volume 2",
    ],
    "Chef Knife": [
        "", " 15 cm", " 20 cm", " 25 cm", " with Sheath", " Gift Box", " Santoku", " Set of 3",
    ],
    "Cast Iron Pan": [
        "", " 20 cm", " 26 cm", " 30 cm", " Skillet", " Griddle", " with Lid", " Pre-Seasoned",
    ],
    "Cutting Board": [
        "", " Small", " Medium", " Large", " Set of 3", " with Groove", " Reversible", " Serving",
    ],
    "Kettle": [
        "", " 1L", " 1.7L", " Gooseneck", " Stovetop", " Electric", " Whistling",
        " Temperature Control",
    ],
    "Mixing Bowls": [
        "", " Set of 3", " Set of 5", " with Lids", " Nesting", " 2L", " 4L", " Non-Slip",
    ],
    "Headphones": [
        "", " Over-Ear", " On-Ear", " Earbuds", " Sport Earbuds", " Kids", " Foldable",
        " Studio Monitor",
    ],
    "USB Charger": ["", " 20W", " 30W", " 65W", " Dual Port", " Car", " Travel", " 3-Port"],
    "Bluetooth Speaker": [
        "", " Mini", " Shower", " Outdoor", " Party", " Desk", " Bookshelf", " 360",
    ],
    "Power Bank": [
        "", " 5,000 mAh", " 10,000 mAh", " 20,000 mAh", " MagSafe", " Solar", " Slim", " Laptop",
    ],
    "Webcam": [
        "", " 720p", " 1080p", " 4K", " with Microphone", " Wide-Angle", " Privacy Cover",
        " Ring Light",
    ],
    "Throw Pillow": [
        "", " 45 cm", " 50 cm", " Lumbar", " Set of 2", " Outdoor", " Cover Only", " Tasseled",
    ],
    "Candle": [
        "", " Small", " Large", " Three-Wick", " Travel Tin", " Set of 3", " Pillar",
        " Tealights 12",
    ],
    "Picture Frame": [
        "", " 10x15 cm", " 13x18 cm", " 20x25 cm", " A4", " Collage", " Set of 3", " Floating",
    ],
    "Vase": ["", " Small", " Medium", " Large", " Bud", " Set of 3", " Tall", " Bottle"],
    "Wall Clock": [
        "", " 30 cm", " 40 cm", " 60 cm", " Silent", " Station", " Sunburst", " Minimal Dial",
    ],
    "Water Bottle": [
        "", " 500ml", " 750ml", " 1L", " Filter", " Kids", " Sport Cap", " Collapsible",
    ],
    "Camping Mug": [
        "", " 350ml", " 500ml", " Enamel", " Titanium", " Set of 2", " with Lid", " Folding",
    ],
    "Hiking Socks": [
        "", " Ankle", " Crew", " Knee", " 2 Pairs", " 3 Pairs", " Cushioned", " Liner",
    ],
    "Headlamp": [
        "", " 200 lm", " 400 lm", " 800 lm", " Rechargeable", " Red Light", " Kids", " Running",
    ],
    "Daypack": ["", " 15L", " 20L", " 25L", " 30L", " Hydration", " Rolltop", " Packable"],
    "T-Shirt": ["", " XS", " S", " M", " L", " XL", " Long Sleeve", " 3 Pack"],
    "Hoodie": ["", " XS", " S", " M", " L", " XL", " Zip", " Pullover"],
    "Jeans": ["", " W28", " W30", " W32", " W34", " W36", " Straight", " Tapered"],
    "Sneakers": ["", " EU 38", " EU 40", " EU 42", " EU 44", " EU 46", " High-Top", " Slip-On"],
    "Rain Jacket": ["", " XS", " S", " M", " L", " XL", " Packable", " Hooded"],
    "Puzzle": [
        "", " 100 Pieces", " 300 Pieces", " 500 Pieces", " 1000 Pieces", " 2000 Pieces", " Floor",
        " 3D",
    ],
    "Board Game": [
        "", " 2-Player", " Family Edition", " Travel Edition", " Expansion", " Deluxe Edition",
        " Strategy", " Co-op",
    ],
    "Building Blocks": [
        "", " 100 Pieces", " 250 Pieces", " 500 Pieces", " Starter Set", " Bucket", " Vehicles",
        " Castle",
    ],
    "Card Game": [
        "", " Party", " Travel", " Expansion", " Strategy", " Kids", " 2-Player", " Trivia",
    ],
    "Plush Toy": ["", " Small", " Medium", " Large", " Giant", " Keychain", " Weighted", " Glow"],
}
# fmt: on


@dataclass(frozen=True)
class ShopPreset:
    """Knobs of a generated shop."""

    n_customers: int
    n_items: int
    n_groups: int
    categories: tuple[str, ...]
    consumable_share: float
    """Share of items in consumable categories that are rebought on a cycle."""
    cycle_days: tuple[float, float]
    """Range of consumables' mean repurchase cycles."""
    group_loyalty: float
    """Probability a discovery pick comes from the customer's own groups."""
    adopt_prob: float
    """Probability a customer who buys a consumable keeps rebuying it."""
    rate_shape: float = 0.9
    rate_mean_days: float = 30.0
    """Mean days between discovery orders."""
    churn_a: float = 1.0
    churn_b: float = 6.0
    seasonal: bool = False
    """Items are released through the year and sell mostly in their first months."""
    zipf: float = 0.9


PRESETS: dict[str, ShopPreset] = {
    "demo": ShopPreset(
        n_customers=3000,
        n_items=400,
        n_groups=8,
        categories=tuple(CATEGORIES),
        consumable_share=0.7,
        cycle_days=(14.0, 60.0),
        group_loyalty=0.8,
        adopt_prob=0.5,
    ),
    "grocery": ShopPreset(
        n_customers=3000,
        n_items=300,
        n_groups=6,
        categories=(
            "Coffee & Tea",
            "Pet Supplies",
            "Household",
            "Personal Care",
            "Snacks",
            "Kitchen",
        ),
        consumable_share=0.9,
        cycle_days=(7.0, 45.0),
        group_loyalty=0.75,
        adopt_prob=0.7,
        rate_mean_days=40.0,
        churn_b=8.0,
    ),
    "fashion": ShopPreset(
        n_customers=4000,
        n_items=1500,
        n_groups=10,
        categories=("Clothing", "Outdoor", "Home Decor", "Electronics", "Books", "Toys & Games"),
        consumable_share=0.0,
        cycle_days=(30.0, 90.0),
        group_loyalty=0.85,
        adopt_prob=0.0,
        rate_mean_days=35.0,
        seasonal=True,
        zipf=0.8,
    ),
}


@dataclass
class SyntheticShop:
    """A generated transaction log, catalog and the truth behind them."""

    transactions: pd.DataFrame
    catalog: pd.DataFrame
    truth: dict[str, Any] = field(default_factory=dict)


def _catalog(preset: ShopPreset, n_items: int, rng: np.random.Generator) -> dict[str, Any]:
    cats = list(preset.categories)
    cat_of = rng.integers(len(cats), size=n_items)
    group_of = rng.integers(preset.n_groups, size=n_items)
    consumable_cat = np.array([CATEGORIES[c][1] for c in cats])[cat_of]
    consumable = consumable_cat & (rng.random(n_items) < preset.consumable_share)
    lo, hi = preset.cycle_days
    cycle = np.where(consumable, rng.uniform(lo, hi, size=n_items), np.inf)
    titles = []
    seen: set[str] = set()
    for i in range(n_items):
        category = cats[cat_of[i]]
        nouns, words = CATEGORIES[category][0], DESCRIPTORS[category]
        for _ in range(20):
            a = rng.integers(len(words))
            noun = nouns[rng.integers(len(nouns))]
            v = VARIANTS[noun]
            t = f"{words[a]} {noun}{v[rng.integers(len(v))]}"
            if t not in seen:
                break
        else:
            t = f"{t} #{i}"
        seen.add(t)
        titles.append(t)
    base_price = {
        c: p for c, p in zip(CATEGORIES, [12, 25, 8, 7, 5, 15, 35, 45, 22, 18, 30, 20], strict=True)
    }
    price = np.array([base_price[cats[c]] for c in cat_of]) * rng.lognormal(0.0, 0.35, n_items)
    # popularity: Zipf within each group, a random order of items
    rank_in_group = np.zeros(n_items)
    for g in range(preset.n_groups):
        members = np.flatnonzero(group_of == g)
        rank_in_group[rng.permutation(members)] = np.arange(1, len(members) + 1)
    weight = 1.0 / rank_in_group**preset.zipf
    return {
        "category": np.array(cats)[cat_of],
        "group": group_of,
        "consumable": consumable,
        "cycle": cycle,
        "title": np.array(titles),
        "price": np.round(price, 2),
        "weight": weight,
    }


def generate_shop(
    preset: str = "demo",
    *,
    n_customers: int | None = None,
    n_items: int | None = None,
    seed: int = 0,
    start: str = "2025-01-01",
    days: int = 365,
) -> SyntheticShop:
    """Generate a shop; the same arguments always give the same shop.

    Raises
    ------
    ValueError
        For an unknown preset or non-positive sizes.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    n_c = int(n_customers or p.n_customers)
    n_i = int(n_items or p.n_items)
    if n_c <= 0 or n_i <= 0 or days <= 0:
        raise ValueError("n_customers, n_items and days must be positive")
    rng = np.random.default_rng(seed)
    cat = _catalog(p, n_i, rng)
    G = p.n_groups
    release = rng.uniform(-60, days - 30, size=n_i) if p.seasonal else np.full(n_i, -1.0)

    # customers: taste, acquisition, purchase rate, churn probability
    primary = rng.integers(G, size=n_c)
    secondary = np.where(rng.random(n_c) < 0.3, rng.integers(G, size=n_c), primary)
    acquired = rng.uniform(0, days * 0.85, size=n_c)
    rate = rng.gamma(p.rate_shape, 1.0 / (p.rate_shape * p.rate_mean_days), size=n_c)
    churn_p = rng.beta(p.churn_a, p.churn_b, size=n_c)

    # per-group item distributions (own group items get the bulk of the mass)
    group_items = [np.flatnonzero(cat["group"] == g) for g in range(G)]
    global_w = cat["weight"] / cat["weight"].sum()

    def pick(cust: int, t: float, k: int) -> np.ndarray:
        """k distinct discovery items for a customer at day t."""
        out: list[int] = []
        for _ in range(k * 3):
            if len(out) >= k:
                break
            if rng.random() < p.group_loyalty:
                g = primary[cust] if rng.random() < 0.7 else secondary[cust]
                members = group_items[g]
                if members.size == 0:
                    continue
                w = cat["weight"][members]
                if p.seasonal:
                    age = t - release[members]
                    w = w * np.where(age < 0, 0.0, np.exp(-np.maximum(age, 0) / 90.0))
                if w.sum() <= 0:
                    continue
                item = int(members[rng.choice(members.size, p=w / w.sum())])
            else:
                item = int(rng.choice(n_i, p=global_w))
                if p.seasonal and release[item] > t:
                    continue
            if item not in out:
                out.append(item)
        return np.array(out, dtype=np.int64)

    cust_col: list[np.ndarray] = []
    item_col: list[np.ndarray] = []
    day_col: list[np.ndarray] = []
    churn_day = np.full(n_c, np.nan)
    adopted: list[tuple[int, int, float]] = []
    for c in range(n_c):
        t = acquired[c]
        lines_c: list[int] = []
        lines_i: list[int] = []
        lines_t: list[float] = []
        end_life = float(days)
        while t < days:
            k = 1 + min(rng.poisson(0.6), 3)
            items = pick(c, t, k)
            mine = {a[1] for a in adopted}
            for it in items:
                if int(it) in mine:
                    continue  # already rebought on its own cycle
                lines_c.append(c)
                lines_i.append(int(it))
                lines_t.append(t)
                if cat["consumable"][it] and rng.random() < p.adopt_prob:
                    # personal cycle around the item's mean cycle
                    cyc = cat["cycle"][it] * rng.gamma(8.0, 1 / 8.0)
                    adopted.append((c, int(it), cyc, t))  # type: ignore[arg-type]
            if rng.random() < churn_p[c]:
                end_life = t + rng.exponential(10.0)
                churn_day[c] = end_life
                break
            t += rng.exponential(1.0 / rate[c])
        cust_col.append(np.array(lines_c, dtype=np.int64))
        item_col.append(np.array(lines_i, dtype=np.int64))
        day_col.append(np.array(lines_t))
        # rebuys of adopted consumables on their personal cycle until the customer leaves
        for cc, it, cyc, t0 in [a for a in adopted if a[0] == c]:  # type: ignore[misc]
            stop = min(end_life, days, t0 + rng.exponential(240.0))  # may lose interest
            gaps = rng.gamma(6.0, cyc / 6.0, size=int(days / max(cyc, 1.0)) + 3)
            times = t0 + np.cumsum(gaps)
            times = times[times < stop]
            if times.size:
                cust_col.append(np.full(times.size, cc, dtype=np.int64))
                item_col.append(np.full(times.size, it, dtype=np.int64))
                day_col.append(times)
        adopted = [a for a in adopted if a[0] != c]

    cust = np.concatenate(cust_col)
    item = np.concatenate(item_col)
    day = np.concatenate(day_col)
    # within-day time: shop hours, 08:00-22:00
    secs = (np.floor(day) * 86400 + rng.uniform(8 * 3600, 22 * 3600, size=day.size)).astype(
        np.int64
    )
    ts = pd.Timestamp(start) + pd.to_timedelta(secs, unit="s")
    qty = 1 + (rng.random(day.size) < 0.15).astype(np.int64) * rng.integers(1, 3, size=day.size)
    price = np.round(cat["price"][item] * np.where(rng.random(day.size) < 0.1, 0.85, 1.0), 2)
    cust_ids = np.array([f"C{c:06d}" for c in range(n_c)])
    item_ids = np.array([f"I{i:05d}" for i in range(n_i)])
    tx = pd.DataFrame(
        {
            "customer_id": cust_ids[cust],
            "item_id": item_ids[item],
            "timestamp": ts.floor("s"),
            "quantity": qty,
            "price": price,
        }
    ).sort_values(["timestamp", "customer_id", "item_id"], ignore_index=True)
    catalog = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": cat["title"],
            "category": cat["category"],
            "price": cat["price"],
            "available": rng.random(n_i) >= 0.05,
        }
    )
    truth = {
        "customer_group": primary,
        "customer_secondary_group": secondary,
        "customer_rate_per_day": rate,
        "customer_churn_prob": churn_p,
        "customer_churn_day": churn_day,
        "customer_acquired_day": acquired,
        "item_group": cat["group"],
        "item_consumable": cat["consumable"],
        "item_cycle_days": cat["cycle"],
        "item_release_day": release,
        "customer_ids": cust_ids,
        "item_ids": item_ids,
    }
    return SyntheticShop(transactions=tx, catalog=catalog, truth=truth)


def next_weeks(
    shop: SyntheticShop,
    weeks: int = 1,
    *,
    seed: int = 1,
    new_customer_share: float = 0.03,
    new_item_share: float = 0.02,
    churn_share: float = 0.15,
) -> SyntheticShop:
    """The same shop ``weeks`` weeks later: its whole log plus the new weeks' orders.

    What a weekly export brings: customers who keep buying (rebuying the
    consumables they adopted and discovering items of their taste groups),
    recently active customers who stop (``churn_share`` of those who bought in
    the last 60 days), new customers (``new_customer_share`` of the customer
    base, each buying from one taste group) and new items (``new_item_share``
    of the catalogue, in existing categories and taste groups, bought by
    customers of their group).

    Raises
    ------
    ValueError
        For a non-positive number of weeks or shares outside [0, 1].
    """
    if weeks < 1:
        raise ValueError("weeks must be at least 1")
    for name, share in (
        ("new_customer_share", new_customer_share),
        ("new_item_share", new_item_share),
        ("churn_share", churn_share),
    ):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    rng = np.random.default_rng(seed)
    tx, catalog, truth = shop.transactions, shop.catalog, shop.truth
    start = tx["timestamp"].max().normalize() + pd.Timedelta(days=1)
    n_days = 7 * weeks

    # new items: copies of existing items' category, group and price, new ids and titles
    n_items = len(catalog)
    n_new_items = int(round(new_item_share * n_items))
    src = rng.integers(n_items, size=n_new_items)
    new_items = catalog.iloc[src].reset_index(drop=True)
    new_items["item_id"] = [f"I{n_items + j:05d}" for j in range(n_new_items)]
    new_items["title"] = ["New " + str(title) for title in new_items["title"]]
    new_items["available"] = True
    item_group = np.concatenate([truth["item_group"], truth["item_group"][src]])
    all_items = pd.concat([catalog, new_items], ignore_index=True)
    item_ids = all_items["item_id"].to_numpy()
    prices = all_items["price"].to_numpy(dtype=float)
    weight = np.ones(len(all_items))
    weight[n_items:] = 3.0  # a launch sells

    # who keeps buying, who stops, who is new
    last_day = tx.groupby("customer_id", observed=True)["timestamp"].max()
    recent = last_day[last_day >= start - pd.Timedelta(days=60)].index.to_numpy()
    churned = rng.choice(recent, size=int(round(churn_share * len(recent))), replace=False)
    staying = np.setdiff1d(recent, churned)
    n_customers = len(truth["customer_ids"])
    n_new = int(round(new_customer_share * n_customers))
    new_ids = np.array([f"C{n_customers + j:06d}" for j in range(n_new)])
    group_of = dict(zip(truth["customer_ids"], truth["customer_group"], strict=True))
    rate_of = dict(zip(truth["customer_ids"], truth["customer_rate_per_day"], strict=True))
    n_groups = int(item_group.max()) + 1
    members = [np.flatnonzero(item_group == g) for g in range(n_groups)]
    bought = tx.groupby("customer_id", observed=True)["item_id"].agg(lambda s: s.unique())

    lines: list[tuple[str, str, float]] = []
    for cid in staying:
        n_orders = rng.poisson(rate_of[cid] * n_days)
        for _ in range(n_orders):
            day = rng.uniform(0, n_days)
            own = bought.get(cid)
            if own is not None and len(own) and rng.random() < 0.6:
                lines.append((cid, str(rng.choice(own)), day))  # a rebuy
            else:
                m = members[group_of[cid]]
                w = weight[m] / weight[m].sum()
                lines.append((cid, str(item_ids[rng.choice(m, p=w)]), day))
    for cid in new_ids:
        m = members[rng.integers(n_groups)]
        w = weight[m] / weight[m].sum()
        day = rng.uniform(0, n_days)
        for j in rng.choice(m, size=min(len(m), 1 + rng.poisson(0.8)), replace=False, p=w):
            lines.append((str(cid), str(item_ids[j]), day))
    new = pd.DataFrame(lines, columns=["customer_id", "item_id", "day"])
    secs = np.floor(new["day"].to_numpy()) * 86400 + rng.uniform(8 * 3600, 22 * 3600, len(new))
    row_of = {i: r for r, i in enumerate(item_ids)}
    new_tx = pd.DataFrame(
        {
            "customer_id": new["customer_id"],
            "item_id": new["item_id"],
            "timestamp": (start + pd.to_timedelta(secs.astype(np.int64), unit="s")).floor("s"),
            "quantity": 1 + (rng.random(len(new)) < 0.15).astype(np.int64),
            "price": np.round(prices[[row_of[i] for i in new["item_id"]]], 2),
        }
    )
    both = pd.concat(
        [tx.astype({"customer_id": str, "item_id": str}), new_tx], ignore_index=True
    ).sort_values(["timestamp", "customer_id", "item_id"], ignore_index=True)
    later = {
        **truth,
        "item_group": item_group,
        "item_ids": item_ids,
        "customer_ids": np.concatenate([truth["customer_ids"], new_ids]),
        "new_customer_ids": new_ids,
        "new_item_ids": item_ids[n_items:],
        "churned_customer_ids": np.sort(churned),
        "weeks_later": weeks,
    }
    return SyntheticShop(transactions=both, catalog=all_items, truth=later)


def write_shop(shop: SyntheticShop, directory: str | Path) -> dict[str, Path]:
    """Write ``transactions.csv`` and ``items.csv``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"transactions": directory / "transactions.csv", "items": directory / "items.csv"}
    tx = shop.transactions.copy()
    tx["timestamp"] = tx["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    tx.to_csv(paths["transactions"], index=False)
    shop.catalog.to_csv(paths["items"], index=False)
    return paths


def generate_interactions(
    n_customers: int,
    n_items: int,
    n_interactions: int,
    seed: int = 0,
    *,
    days: int = 365,
    n_groups: int = 20,
    start: str = "2025-01-01",
) -> pd.DataFrame:
    """A large log for benchmarks, fully vectorised.

    Customers have lognormal activity (a heavy tail, capped so no customer has
    more than 0.05% of the rows) and a taste group; 80% of picks come from the
    customer's group with Zipf popularity, the rest from global popularity.
    Ids are pandas categoricals, which keeps 5 million rows in a few hundred MB.
    """
    rng = np.random.default_rng(seed)
    act = rng.lognormal(0.0, 1.0, size=n_customers)
    act = np.minimum(act / act.sum(), 5e-4)
    act /= act.sum()
    cust = rng.choice(n_customers, size=n_interactions, p=act)
    cust_group = rng.integers(n_groups, size=n_customers)
    item_group = rng.integers(n_groups, size=n_items)
    order = np.argsort(item_group, kind="stable")
    counts = np.bincount(item_group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)])
    w = np.empty(n_items)
    for g in range(n_groups):
        k = counts[g]
        w[starts[g] : starts[g + 1]] = 1.0 / np.arange(1, k + 1) ** 0.9
    # cumulative weights, normalised inside each group and offset by the group number
    cum = np.empty(n_items)
    for g in range(n_groups):
        seg = w[starts[g] : starts[g + 1]]
        cum[starts[g] : starts[g + 1]] = g + np.cumsum(seg) / seg.sum()
    own = rng.random(n_interactions) < 0.8
    grp = cust_group[cust]
    pos = np.searchsorted(cum, grp + rng.random(n_interactions) * (1 - 1e-12))
    pos = np.minimum(pos, n_items - 1)
    item_from_group = order[pos]
    global_w = np.empty(n_items)
    global_w[order] = w
    global_w /= global_w.sum()
    item = np.where(own, item_from_group, rng.choice(n_items, size=n_interactions, p=global_w))
    first = rng.uniform(0, days * 0.8, size=n_customers)
    day = first[cust] + rng.uniform(0, 1, size=n_interactions) * (days - first[cust])
    secs = (day * 86400).astype(np.int64)
    width_c, width_i = len(str(n_customers)), len(str(n_items))
    cust_ids = pd.Index([f"C{c:0{width_c}d}" for c in range(n_customers)])
    item_ids = pd.Index([f"I{i:0{width_i}d}" for i in range(n_items)])
    return pd.DataFrame(
        {
            "customer_id": pd.Categorical.from_codes(cust, categories=cust_ids),
            "item_id": pd.Categorical.from_codes(item, categories=item_ids),
            "timestamp": pd.Timestamp(start) + pd.to_timedelta(secs, unit="s"),
            "quantity": np.ones(n_interactions, dtype=np.int32),
            "price": np.round(rng.lognormal(2.5, 0.5, size=n_interactions), 2),
        }
    )
