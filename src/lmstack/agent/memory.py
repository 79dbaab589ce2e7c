"""Long-term memories in SQLite: full-text search (FTS5 with Porter stemming, BM25) and optional embeddings.

Memories are scoped by (agent, user) and carry created/updated timestamps, so stale facts can be
listed (`stale`) and replaced (`save` with the same `key` supersedes the old fact; the old row is
kept, marked superseded, for the audit trail). With an `embed` function (text -> vector), search
fuses BM25 and cosine rankings by reciprocal rank; without one it is BM25 alone.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from lmstack.db import ensure_schema, transaction

MIGRATIONS = [
    """
    CREATE TABLE memories (
        id INTEGER PRIMARY KEY, agent TEXT NOT NULL, user TEXT NOT NULL, key TEXT, text TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, superseded_by INTEGER, embedding BLOB);
    CREATE INDEX memories_scope ON memories(agent, user, superseded_by);
    CREATE VIRTUAL TABLE memories_fts USING fts5(text, content='memories', content_rowid='id',
                                              tokenize='porter unicode61');
    CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    """,
]

RRF_K = 60  # the usual reciprocal-rank-fusion constant: damps the weight of the very top ranks


@dataclass(slots=True)
class Memory:
    id: int
    text: str
    key: str | None
    created_at: float
    updated_at: float
    score: float = 0.0


class MemoryStore:
    def __init__(self, conn: sqlite3.Connection, embed: Callable[[str], Sequence[float]] | None = None):
        self.conn = conn
        self.embed = embed
        ensure_schema(conn, "memory", MIGRATIONS)

    def save(self, text: str, scope: tuple[str, str], key: str | None = None) -> int:
        """Store a fact; a fact saved under an existing `key` in the scope replaces the old one."""
        now = time.time()
        vector = np.asarray(self.embed(text), dtype=np.float32).tobytes() if self.embed else None
        with transaction(self.conn):
            cursor = self.conn.execute(
                "INSERT INTO memories (agent, user, key, text, created_at, updated_at, embedding) VALUES (?,?,?,?,?,?,?)",
                (*scope, key, text, now, now, vector))
            new_id = cursor.lastrowid
            if key is not None:
                self.conn.execute("UPDATE memories SET superseded_by = ?, updated_at = ? WHERE agent = ? AND user = ? "
                                  "AND key = ? AND id != ? AND superseded_by IS NULL", (new_id, now, *scope, key, new_id))
        return new_id

    def search(self, query: str, scope: tuple[str, str], limit: int = 5) -> list[Memory]:
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.conn.execute(
            "SELECT m.id, m.text, m.key, m.created_at, m.updated_at, bm25(memories_fts) AS rank FROM memories_fts "
            "JOIN memories m ON m.id = memories_fts.rowid WHERE memories_fts MATCH ? AND m.agent = ? AND m.user = ? "
            "AND m.superseded_by IS NULL ORDER BY rank LIMIT ?", (match, *scope, limit * 4)).fetchall()
        found = {r["id"]: Memory(r["id"], r["text"], r["key"], r["created_at"], r["updated_at"]) for r in rows}
        scores = {r["id"]: 1.0 / (RRF_K + rank) for rank, r in enumerate(rows)}
        if self.embed is not None:
            for rank, (memory, _) in enumerate(self._by_embedding(query, scope, limit * 4)):
                found.setdefault(memory.id, memory)
                scores[memory.id] = scores.get(memory.id, 0.0) + 1.0 / (RRF_K + rank)
        ranked = sorted(found.values(), key=lambda m: -scores[m.id])[:limit]
        for memory in ranked:
            memory.score = scores[memory.id]
        return ranked

    def _by_embedding(self, query: str, scope: tuple[str, str], limit: int) -> list[tuple[Memory, float]]:
        q = np.asarray(self.embed(query), dtype=np.float32)
        rows = self.conn.execute("SELECT id, text, key, created_at, updated_at, embedding FROM memories WHERE agent = ? "
                                 "AND user = ? AND superseded_by IS NULL AND embedding IS NOT NULL", scope).fetchall()
        scored = []
        for r in rows:
            v = np.frombuffer(r["embedding"], dtype=np.float32)
            cosine = float(q @ v / (np.linalg.norm(q) * np.linalg.norm(v) + 1e-12))
            scored.append((Memory(r["id"], r["text"], r["key"], r["created_at"], r["updated_at"]), cosine))
        return sorted(scored, key=lambda pair: -pair[1])[:limit]

    def stale(self, scope: tuple[str, str], older_than_s: float) -> list[Memory]:
        """Live facts not updated for `older_than_s` seconds: candidates to re-check and replace."""
        cutoff = time.time() - older_than_s
        rows = self.conn.execute("SELECT id, text, key, created_at, updated_at FROM memories WHERE agent = ? AND "
                                 "user = ? AND superseded_by IS NULL AND updated_at < ? ORDER BY updated_at",
                                 (*scope, cutoff)).fetchall()
        return [Memory(r["id"], r["text"], r["key"], r["created_at"], r["updated_at"]) for r in rows]

    def all_texts(self, scope: tuple[str, str]) -> list[str]:
        rows = self.conn.execute("SELECT text FROM memories WHERE agent = ? AND user = ? AND superseded_by IS NULL",
                                 scope).fetchall()
        return [r["text"] for r in rows]
