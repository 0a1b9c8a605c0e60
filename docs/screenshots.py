"""Take the README's screenshots of the marketers' console.

    python docs/screenshots.py [--models-dir DIR] [--width 1440] [--height 900]

Without ``--models-dir`` it generates the demo shop and trains it (the shop
``encore demo`` serves) into a temporary directory. It serves that store
with uvicorn on 127.0.0.1 and has Debian's headless Chromium (the set-up of
``tests/test_e2e_console.py``) open the customer view, the item view and the
campaign builder, writing ``docs/customer.png``, ``docs/item.png`` and
``docs/campaigns.png``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.console_browser import headless_chromium, served  # noqa: E402


def wait_for(driver, css: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def shoot(models: Path, out: Path, width: int, height: int) -> list[Path]:
    from recommender.store.bundle import load_bundle

    bundle = load_bundle(models)
    timing = bundle.timing
    assert timing is not None
    # a frequent buyer whose likely date falls inside the plot, and a repurchase item
    from recommender.answers import likely_purchase_days

    rows = timing.summary_.x.argsort()[::-1][:200]
    days = likely_purchase_days(timing, rows)
    customer = bundle.customers.id(int(rows[(days > 7) & (days <= 60)][0]))
    rep = bundle.repurchase
    item = bundle.items.id(int(rep.is_repurchase_item_.argmax())) if rep is not None else None
    shots = []
    with served(models) as base:
        driver = headless_chromium(width, height)
        try:
            driver.set_window_size(width, height)
            driver.get(f"{base}/customers/{customer}")
            wait_for(driver, "#timing-plot svg")
            wait_for(driver, "#picks tr td")
            time.sleep(0.5)
            shots.append(_save(driver, out / "customer.png"))
            if item is not None:
                driver.set_window_size(width, height)
                driver.get(f"{base}/items/{item}")
                wait_for(driver, "#buyers tr td")
                wait_for(driver, "#newbuyers tr td")
                time.sleep(0.5)
                shots.append(_save(driver, out / "item.png"))
            driver.set_window_size(width, height)
            driver.get(f"{base}/campaigns?kind=at_risk&within_days=30&min_probability=0&picks=3")
            wait_for(driver, "#c-preview tr td")
            time.sleep(0.5)
            shots.append(_save(driver, out / "campaigns.png"))
        finally:
            driver.quit()
    return shots


def _save(driver, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """The whole page: the window is made as tall as the page first."""
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 20, 4000))
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--width", type=int, default=1440)
    p.add_argument("--height", type=int, default=900)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models_dir
        if models is None:
            from recommender.data.synthetic import generate_shop, write_shop
            from training.pipeline import train

            paths = write_shop(generate_shop("demo", seed=0), Path(tmp) / "shop")
            train(
                paths["transactions"],
                items_path=paths["items"],
                models_dir=Path(tmp) / "models",
                say=lambda msg: None,
            )
            models = Path(tmp) / "models"
        for path in shoot(models, args.out, args.width, args.height):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
