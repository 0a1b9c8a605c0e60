"""Fuzz every operation of the OpenAPI schema: no input may cause a server error.

Schemathesis (4.x) generates valid and invalid requests from the app's own
schema and sends them to the real app (lifespan included) serving a small
trained shop. A 5xx, an exception escaping the app, or an answer that breaks
the documented contract (status code, content type, response schema) fails.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from threadpoolctl import threadpool_limits

from recommender.store.bundle import load_bundle
from serving.app import create_app
from serving.schemas import ID_PATTERN
from serving.settings import ServingSettings
from tests.test_serving import train_small_shop

MIN_CASES = 10
"""Cases each operation must receive; fewer means it is not really being fuzzed."""

RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Invalid JSON bodies must be refused. Invalid query values are not checked:
# on the wire every query value is text, so a "number where a string belongs"
# the fuzzer sends (exclude_items=1.5e57) is a valid string to any server.
JSON_BODIES = {"POST /v1/recommendations", "POST /v1/recommendations/batch"}

# Ids of the trained shop (checked by `served_app`), given to the path parameters
# as examples: the examples and coverage phases then send their boundary values
# (k=1000, horizon_days=3650, ...) to a customer and an item the model knows,
# instead of stopping at a 404.
EXAMPLES = {"customer_id": "C000000", "item_id": "I00000"}


def _with_examples(spec: dict[str, Any]) -> dict[str, Any]:
    for path_item in spec["paths"].values():
        for op in path_item.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] in EXAMPLES:
                    param["example"] = EXAMPLES[param["name"]]
    return spec


# The schema is needed at import time to parametrize the test. It does not
# depend on the model, so it comes from an app that is never started; the
# cases go to `served_app`, which has a trained model.
with threadpool_limits(limits=None):  # collecting this file must not pin the threads
    _spec = create_app(ServingSettings(models_dir=Path("unused"), reload_interval_s=0)).openapi()
schema = schemathesis.openapi.from_dict(_with_examples(_spec))


# -- known ids ----------------------------------------------------------------------------------
# Random ids are almost never in the model, so on their own they only reach the
# 404 and popular-items paths. The hooks below swap some generated ids for ones
# the model knows, so the scoring, timing and similar-items code gets fuzzed
# too (with fuzzed k, windows and filters). Only a string that is already a
# valid id is swapped, for another valid id: a case meant to be invalid stays so.

KNOWN: dict[str, list[str]] = {}
"""Ids and categories of the served model, filled in by the ``served_app`` fixture."""
_ID = re.compile(ID_PATTERN)
# field or parameter name -> (pool in KNOWN, which generated values may be swapped)
SWAPS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "customer_id": ("customers", _ID.fullmatch),
    "customer_ids": ("customers", _ID.fullmatch),
    "item_id": ("items", _ID.fullmatch),
    "recent_items": ("items", _ID.fullmatch),
    "exclude_items": ("items", _ID.fullmatch),
    "category": ("categories", lambda text: True),  # any string is a valid category
}


def _known_or_kept(value: Any, key: str, always: bool) -> st.SearchStrategy:
    pool, valid = SWAPS[key]
    if not (isinstance(value, str) and valid(value)):
        return st.just(value)
    known = st.sampled_from(KNOWN[pool])
    if always:
        return known
    # three times in four a known one
    return st.integers(0, 3).flatmap(lambda i: known if i else st.just(value))


def _swap(container: Any, *, always: bool = False) -> st.SearchStrategy:
    """Generated values, or some of them replaced by what the model knows."""
    if not isinstance(container, dict):
        return st.just(container)
    parts = {}
    for key, value in container.items():
        if key not in SWAPS:
            parts[key] = st.just(value)
        elif isinstance(value, list):
            parts[key] = st.tuples(*(_known_or_kept(v, key, always) for v in value)).map(list)
        else:
            parts[key] = _known_or_kept(value, key, always)
    return st.fixed_dictionaries(parts)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    # Always a known id when the generated one is valid: the coverage phase (which
    # does not go through hooks) and the invalid ids already exercise the 404s.
    return _swap(path_parameters, always=True)


@schema.hook
def flatmap_query(context, query):
    return _swap(query)


@schema.hook
def flatmap_body(context, body):
    return _swap(body)


pytestmark = pytest.mark.usefixtures("thread_limits_restored")


@pytest.fixture(scope="module")
def served_app(tmp_path_factory) -> FastAPI:
    trained = train_small_shop(tmp_path_factory.mktemp("fuzz"))
    bundle = load_bundle(trained.models)
    KNOWN["customers"] = [str(c) for c in bundle.customers.ids_[:50]]
    KNOWN["items"] = [str(i) for i in bundle.items.ids_]
    KNOWN["categories"] = sorted(set(map(str, bundle.catalog.category)) - {""})
    assert bundle.customers.row(EXAMPLES["customer_id"]) is not None
    assert bundle.items.row(EXAMPLES["item_id"]) is not None
    return create_app(
        ServingSettings(models_dir=trained.models, reload_interval_s=0, admin_token="fuzz-token")
    )


@pytest.fixture
def sent(request) -> Iterator[Counter]:
    """Status codes of the cases sent for one operation; too few fails the test."""
    codes: Counter = Counter()
    yield codes
    n = sum(codes.values())
    assert n >= MIN_CASES, f"{request.node.name}: only {n} cases were sent ({dict(codes)})"
    if "/v1/admin/reload" not in request.node.name:  # the fuzzer cannot know the token
        # some cases must get past validation and the id lookup to the model itself
        assert codes[200] > 0, f"{request.node.name}: no case was answered ({dict(codes)})"


def test_every_operation_is_fuzzed():
    labels = {op.ok().label for op in schema.get_all_operations()}
    assert len(labels) == 24, labels
    assert JSON_BODIES <= labels


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same cases on every run, so a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_input_causes_a_server_error(case, served_app, sent):
    # Passing the app sends the request in process through its ASGI interface;
    # its lifespan (the model load) runs before the first request.
    response = case.call(app=served_app)
    sent[response.status_code] += 1
    checks = list(RESPONSE_CHECKS)
    if case.operation.label in JSON_BODIES:
        checks.append(negative_data_rejection)
    case.validate_response(response, checks=checks)
