"""A logical replication connection to a slot: its transactions decoded once, as they commit.

The SQL functions (``pg_logical_slot_peek_binary_changes``) decode the slot from its restart point
on every call, and a busy server moves that point only every 15 s or so (when it logs the running
transactions), so each peek re-decoded up to half a minute of WAL: the cost of a batch grew with the
write rate, not with the batch. A replication connection (``START_REPLICATION``) decodes every WAL
record once; widen keeps the transactions it receives until a batch holding them has been
committed by Spark (``confirm``: the standby status update that moves the slot's confirmed
position). Anything not confirmed is sent again by the server after a reconnect, so a lost
connection loses nothing: the stream starts over from the last confirmed position.
"""
from __future__ import annotations

import logging
import select
import time
from typing import TYPE_CHECKING

from widen.pg import pgoutput

if TYPE_CHECKING:
    from psycopg2.extensions import connection

log = logging.getLogger(__name__)
#: how long a restarted stream waits for the slot's previous reader (a killed process's walsender) to let go
SLOT_BUSY_WAIT = 60.0
#: how long ``catch_up`` waits for the server to decode up to a position before it gives up
CATCH_UP_WAIT = 600.0


class SlotStream:
    """Transactions of one slot (pgoutput, protocol 1) in commit order, from a position on.

    ``transactions`` holds every received transaction whose end is past the confirmed position;
    ``seen`` is the end of the last transaction received (with changes for the table or not) and
    ``decoded`` how far the server said it had decoded (its keepalives), so a caller can tell an
    idle slot from one that has not been read yet.
    """

    def __init__(self, params: dict, slot: str, publication: str, start_lsn: int, buffer_changes: int):
        self.params, self.slot, self.publication = params, slot, publication
        self.confirmed = start_lsn
        #: reading pauses above this many buffered changes (the server waits; the slot keeps the WAL)
        self.buffer_changes = buffer_changes
        self.transactions: list[pgoutput.Transaction] = []
        self.seen = self.decoded = start_lsn
        self.buffered = 0
        self._conn: connection | None = None
        self._cursor = None
        self._decoder = pgoutput.Decoder()
        self._lost = False

    # -- connection ---------------------------------------------------------------------------------
    def _open(self) -> None:
        import psycopg2
        import psycopg2.errors
        import psycopg2.extras

        from widen.pg import db

        deadline = time.monotonic() + SLOT_BUSY_WAIT
        while True:
            conn = psycopg2.connect(**db.session_params(self.params),
                                    connection_factory=psycopg2.extras.LogicalReplicationConnection)
            try:
                cur = conn.cursor()
                options = {"proto_version": "1", "publication_names": _quoted(self.publication)}
                if conn.server_version >= 140000:   # the heartbeat's logical decoding message (see postgres_cdc)
                    options["messages"] = "true"
                cur.start_replication(slot_name=self.slot, decode=False, start_lsn=pgoutput.lsn_text(self.confirmed),
                                      options=options, status_interval=10)
            except psycopg2.errors.ObjectInUse:
                conn.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)                   # a killed reader's walsender has not noticed yet
                continue
            except BaseException:
                conn.close()
                raise
            break
        self._conn, self._cursor = conn, cur
        cur.send_feedback(write_lsn=self.confirmed, flush_lsn=self.confirmed)   # the position it may report
        self._decoder = pgoutput.Decoder()
        self.transactions, self.buffered = [], 0
        self.seen = self.decoded = self.confirmed

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = self._cursor = None

    # -- reading ------------------------------------------------------------------------------------
    def poll(self, wait: float = 0.0, limit: bool = True) -> None:
        """Everything the server has sent (waiting up to ``wait`` seconds for the first message),
        decoded; with ``limit``, reading pauses once ``buffer_changes`` changes are buffered. A lost
        connection is opened again at the confirmed position (what it held is sent again)."""
        import psycopg2

        try:
            if self._conn is None:
                self._open()
            deadline = time.monotonic() + wait
            while not (limit and self.buffered >= self.buffer_changes):
                message = self._cursor.read_message()
                self.decoded = max(self.decoded, self._cursor.wal_end)
                if message is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    select.select([self._conn], [], [], left)
                    continue
                for txn in self._decoder.feed([message.payload]):
                    self.seen = max(self.seen, txn.end_lsn)
                    if txn.end_lsn > self.confirmed:
                        self.transactions.append(txn)
                        self.buffered += len(txn.changes)
                        deadline = 0           # a whole transaction arrived: take what is there, do not wait
        except psycopg2.Error as err:
            self._connection_lost(err)
        else:
            self._lost = False

    def _connection_lost(self, err: Exception) -> None:
        """A lost connection (the server or the network; a terminated walsender) is opened again on
        the next call, at the confirmed position; any other error is the caller's."""
        code = getattr(err, "pgcode", None)
        if code and code[:2] not in ("08", "57"):      # 08 connection exception, 57 operator intervention
            raise err
        # once per outage in the log (a server that is down stays quiet here until it is back)
        (log.debug if self._lost else log.warning)(
            "replication connection to slot %s lost (%s): reading again from %s", self.slot,
            str(err).strip() or type(err).__name__, pgoutput.lsn_text(self.confirmed))
        self._lost = True
        self.close()

    def _feedback(self, **kwargs) -> None:
        import psycopg2

        if self._conn is not None:
            try:
                self._cursor.send_feedback(**kwargs)
            except psycopg2.Error as err:
                self._connection_lost(err)

    def catch_up(self, lsn: int) -> None:
        """Wait until every transaction committed before ``lsn`` has been received (the server
        decoded up to it): what a batch planned before a restart, or ``--once``'s end, needs."""
        deadline = time.monotonic() + CATCH_UP_WAIT
        while max(self.seen, self.decoded) < lsn:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replication slot {self.slot!r}: the server did not decode up to "
                                   f"{pgoutput.lsn_text(lsn)} within {CATCH_UP_WAIT:.0f} s")
            self._feedback(reply=True, force=True)      # its answer says how far it decoded
            self.poll(wait=0.5, limit=False)

    def confirm(self, lsn: int) -> None:
        """A batch ending at ``lsn`` is committed: the slot may move there (never back) and the
        transactions up to it are let go."""
        if lsn > self.confirmed:
            self.confirmed = lsn
            self.transactions = [t for t in self.transactions if t.end_lsn > lsn]
            self.buffered = sum(len(t.changes) for t in self.transactions)
        # (a lost connection is told on the next one: its start position)
        self._feedback(write_lsn=self.confirmed, flush_lsn=self.confirmed, force=True)


def _quoted(publication: str) -> str:
    """``publication_names`` is a list of identifiers: the name quoted as one."""
    return '"' + publication.replace('"', '""') + '"'
