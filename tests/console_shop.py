"""A demo-like shop trained with the real pipeline, for the console's tests.

The demo preset's 3,000 customers and 400 items (the shop ``encore demo``
serves), with a configuration that keeps training to a few seconds: no
hyperparameter search, small ALS, no baselines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recommender.data.synthetic import SyntheticShop, generate_shop, write_shop


@dataclass
class DemoShop:
    shop: SyntheticShop
    models: Path
    version: str


def train_demo_shop(
    directory: Path,
    *,
    n_customers: int | None = None,
    n_items: int | None = None,
    seed: int = 0,
    rename: dict[str, str] | None = None,
) -> DemoShop:
    """Generate the demo shop (or a smaller one) and train it into ``directory/models``.

    ``rename`` gives some customers other ids (non-ASCII ones, say) before training.
    """
    # imported here, so a module that only serves does not pull `training` in
    from training.config import ALSConfig, SearchConfig, TrainConfig
    from training.pipeline import train

    shop = generate_shop("demo", n_customers=n_customers, n_items=n_items, seed=seed)
    if rename:
        tx = shop.transactions
        shop.transactions = tx.assign(customer_id=tx["customer_id"].replace(rename))
    paths = write_shop(shop, directory / "shop")
    cfg = TrainConfig(
        top_n=50,
        als=ALSConfig(factors=16, iterations=6),
        search=SearchConfig(enabled=False),
        max_eval_customers=1000,
        run_baselines=False,
        seed=seed,
    )
    result = train(
        paths["transactions"],
        items_path=paths["items"],
        models_dir=directory / "models",
        config=cfg,
        say=lambda msg: None,
    )
    return DemoShop(shop, directory / "models", result.version)
