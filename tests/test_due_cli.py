"""``encore due`` (the campaign export) and the small promises of the command
line: outputs checked before any work, the demo's port checked before training."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServingSettings
from tests.test_serving import TrainedShop, train_small_shop
from training.cli import EXIT_OK, EXIT_USAGE, main

pytestmark = pytest.mark.usefixtures("thread_limits_restored")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedShop:
    return train_small_shop(tmp_path_factory.mktemp("due"))


def test_due_gives_the_apis_due_rows_with_the_apis_picks(trained, tmp_path, capsys):
    out = tmp_path / "due.csv"
    args = ["due", "--models-dir", str(trained.models), "--within-days", "14"]
    assert main([*args, "--min-probability", "0.3", "-k", "3", "--out", str(out)]) == EXIT_OK
    assert "customers likely to buy within 14 days" in capsys.readouterr().out
    table = pd.read_csv(out, dtype={"customer_id": str})
    assert list(table.columns[-3:]) == ["pick_1", "pick_2", "pick_3"]
    assert len(table) > 10
    settings = ServingSettings(models_dir=trained.models, reload_interval_s=0)
    with TestClient(create_app(settings)) as client:
        api = client.get(
            "/v1/customers/due",
            params={"within_days": 14, "min_probability": 0.3, "format": "json", "limit": 100000},
        ).json()["customers"]
        assert [r["customer_id"] for r in api] == table["customer_id"].tolist()
        for mine, theirs in zip(table.to_dict("records"), api, strict=True):
            assert mine["p_purchase"] == pytest.approx(theirs["p_purchase"], abs=1e-6)
            assert mine["expected_purchases"] == pytest.approx(
                theirs["expected_purchases"], abs=1e-6
            )
        for row in table.head(8).to_dict("records"):
            picks = client.get(
                f"/v1/customers/{row['customer_id']}/recommendations", params={"k": 3}
            ).json()
            assert [p["item_id"] for p in picks["items"]] == [
                str(row[f"pick_{i}"]) for i in (1, 2, 3)
            ]


@pytest.mark.parametrize("command", ["due", "recommend", "next-purchase"])
def test_out_into_a_missing_folder_is_one_line_exit_2(trained, tmp_path, capsys, command):
    extra = ["--all"] if command == "recommend" else []
    out = tmp_path / "no" / "such" / "picks.csv"
    rc = main([command, "--models-dir", str(trained.models), *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and err.count("\n") == 1 and "does not exist" in err


def test_out_with_an_unknown_extension_is_refused(trained, tmp_path, capsys):
    out = tmp_path / "picks.xlsx"
    rc = main(["recommend", "--models-dir", str(trained.models), "--all", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and ".csv" in err and ".parquet" in err and ".xlsx" in err
    assert not out.exists()


def test_demo_checks_its_port_before_training(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = main(
            ["demo", "--dir", str(tmp_path / "demo"), "--models-dir", str(tmp_path / "m"),
             "--port", str(port)]
        )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and f"port {port}" in err and "--port" in err
    assert not (tmp_path / "demo").exists() and not Path(tmp_path / "m").exists()
