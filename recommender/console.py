"""What the marketers' console reads of one version, built on first use.

A :class:`Console` belongs to one :class:`~recommender.answers.Answerer`
(one loaded version) and builds each index the first time a question needs
it: the customer and item id searches (:mod:`recommender.lookup`), the dated
purchases (:mod:`recommender.purchases`), the item audiences
(:mod:`recommender.audience`) and the campaign lists
(:mod:`recommender.campaigns`). Building is thread-safe: concurrent first
requests build once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from recommender.answers import Answerer
from recommender.audience import ItemAudience
from recommender.campaigns import Campaigns
from recommender.lookup import PrefixSearch
from recommender.purchases import PurchaseLog

T = TypeVar("T")


class Console:
    """The console's indexes over one version.

    Parameters
    ----------
    answerer
        The answering rules of the version.
    """

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.bundle = answerer.bundle
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _once(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]  # type: ignore[no-any-return]

    @property
    def customers(self) -> PrefixSearch:
        """Prefix search over the customer ids."""
        return self._once("customers", lambda: PrefixSearch.of_ids(self.bundle.customers.ids_))

    @property
    def items(self) -> PrefixSearch:
        """Prefix search over the item ids and the words of their titles."""
        return self._once(
            "items",
            lambda: PrefixSearch.of_items(self.bundle.items.ids_, self.bundle.catalog.title),
        )

    @property
    def purchases(self) -> PurchaseLog | None:
        """The dated purchases (None for a version trained without them)."""
        return self._once("purchases", lambda: PurchaseLog.of(self.bundle))

    @property
    def audience(self) -> ItemAudience:
        """Buyers and likely next buyers of items."""
        return self._once("audience", lambda: ItemAudience(self.bundle))

    @property
    def campaigns(self) -> Campaigns:
        """Campaign lists.

        Raises
        ------
        AnswerError
            ``"unavailable"`` for a version without a next-purchase model.
        """
        return self._once("campaigns", lambda: Campaigns(self.answerer))


__all__ = ["Console"]
