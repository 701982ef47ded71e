"""A ship's migration lifecycle: the facts jobs record, and the state they put the ship in.

Every job records facts about a ship (``widen.catalog.lifecycle.record``, in the transaction of
the work that justifies them); the state is derived from the facts, never set on its own:

    planned -> backfilling -> backfilled -> live -> verified -> switched
                                   (rolled_back: whenever rollback took the ship's tables)

- ``backfilling``: a backfill has started on the ship.
- ``backfilled``: a backfill of the ship's whole history (no --start/--end) finished with every
  chunk done; ``backfilled_through`` is where its history ended.
- ``live``: backfilled, and the stream has written the ship (``live_since``).
- ``verified``: live, and the last reconcile of the ship was clean (``verified_through``); a
  reconcile that finds a difference takes the ship back to ``live``.
- ``switched``: readers are served from the wide tables (``switched_at``; cut-over).
- ``rolled_back``: rollback removed the ship's tables; ``resume`` makes it ``planned`` again.

A stream may write a ship before its backfill finishes (the hand-off starts the stream first):
the fact is kept and the ship becomes ``live`` the moment its backfill is done.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PLANNED = "planned"
BACKFILLING = "backfilling"
BACKFILLED = "backfilled"
LIVE = "live"
VERIFIED = "verified"
SWITCHED = "switched"
ROLLED_BACK = "rolled_back"
STATES = (PLANNED, BACKFILLING, BACKFILLED, LIVE, VERIFIED, SWITCHED, ROLLED_BACK)

#: the facts a job may record (columns of ``ship_lifecycle``)
FACTS = ("backfill_started_at", "backfill_chunks_total", "backfilled_at", "backfilled_through",
         "live_since", "last_streamed_at", "verified_at", "verified_from", "verified_through",
         "last_reconcile_at", "last_reconcile_from", "last_reconcile_through", "last_reconcile_result",
         "switched_at", "rolled_back_at")


def state_of(facts: Mapping[str, Any]) -> str:
    """The state the facts put a ship in."""
    if facts.get("rolled_back_at"):
        return ROLLED_BACK
    if facts.get("switched_at"):
        return SWITCHED
    if not facts.get("backfilled_at"):
        return BACKFILLING if facts.get("backfill_started_at") else PLANNED
    if not facts.get("live_since"):
        return BACKFILLED
    return VERIFIED if facts.get("verified_through") else LIVE
