"""The audit and recording stores on their own (no broker): dedupe, gaps, byte-exactness."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from auditcast.events import Event, Frame
from auditcast.storage.base import EventQuery
from auditcast.storage.recordings import Gap, RecordingStore, to_asciicast
from auditcast.storage.sqlite import SQLiteAuditStore, _search_text

ASCIINEMA = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "asciinema")


def frames(sid: str, chunks: list[bytes], exit_code: int = 0) -> list[Frame]:
    out = [Frame(session_id=sid, seq=i, t=i * 0.01, kind="o", data=c) for i, c in enumerate(chunks)]
    out.append(Frame(session_id=sid, seq=len(chunks), t=len(chunks) * 0.01, kind="x",
                     data=str(exit_code).encode()))  # fmt: skip
    return out


def test_same_event_twice_is_one_row(tmp_path: Path) -> None:
    store = SQLiteAuditStore(tmp_path / "a.db")
    e = Event(type="kube.request", user="bob", verb="get")
    assert store.add_many([e.to_dict(), e.to_dict()]) == 1
    assert store.add(e) == 0
    assert store.count() == 1


def test_session_row_merges_start_and_end_in_any_order(tmp_path: Path) -> None:
    store = SQLiteAuditStore(tmp_path / "a.db")
    end = Event(type="session.end", session_id="s1", user="bob", exit_code=3, bytes_out=6)
    start = Event(type="session.start", session_id="s1", user="bob", command="bash",
                  term={"cols": 100, "rows": 30})  # fmt: skip
    store.add(end)
    store.add(start)
    row = store.session("s1")
    assert row is not None
    assert (row["exit_code"], row["command"], row["cols"], row["bytes_out"]) == (3, "bash", 100, 6)


def test_search_filters_text_and_cursor_paging(tmp_path: Path) -> None:
    store = SQLiteAuditStore(tmp_path / "a.db")
    docs = [Event(type="kube.request", user=f"u{i % 3}",
                  request_path=f"/api/v1/pods/p{i}").to_dict() for i in range(25)]  # fmt: skip
    docs.append(Event(type="ssh.exec", user="u0", command="cat /etc/shadow").to_dict())
    store.add_many(docs)
    assert len(store.search(EventQuery(user="u0", limit=100)).items) == 10
    assert [e["type"] for e in store.search(EventQuery(q="shadow")).items] == ["ssh.exec"]
    assert store.search(EventQuery(q='un"balanced')).items == []
    seen, cursor = [], None
    while True:
        page = store.search(EventQuery(type="kube.request", limit=10, cursor=cursor))
        seen += [e["id"] for e in page.items]
        if not (cursor := page.next_cursor):
            break
    assert seen == [d["id"] for d in docs[:25]]


def test_recording_is_ordered_deduped_and_byte_exact(tmp_path: Path) -> None:
    rs = RecordingStore(tmp_path)
    chunks = [b"\xff\xfeinvalid", b"\x1b[31mred\x1b[0m", "é".encode()[:1], "é".encode()[1:]]
    fs = frames("s1", chunks)
    rs.add(reversed(fs[:3]))
    assert rs.status("s1") == "live" and rs.status("other") == "none"
    rs.add(fs)  # everything again, plus the rest: duplicates are dropped
    rs.add(fs)  # a replay after the session finished changes nothing
    got = list(rs.frames("s1"))
    assert [f.seq for f in got if isinstance(f, Frame)] == list(range(5))
    assert b"".join(f.data for f in got if isinstance(f, Frame) and f.kind == "o") == b"".join(
        chunks
    )


def test_missing_frames_become_a_gap_marker_not_glued(tmp_path: Path) -> None:
    rs = RecordingStore(tmp_path)
    fs = frames("s2", [b"a", b"b", b"c", b"d"])
    rs.add([fs[0], fs[3], fs[4]])
    items = list(rs.frames("s2"))
    gaps = [i for i in items if isinstance(i, Gap)]
    assert gaps == [Gap(1, 2, fs[3].t)]
    lines = [orjson.loads(x) for x in to_asciicast(items)]
    assert [ln[1:] for ln in lines[1:]] == [
        ["o", "a"],
        ["m", "gap: frames 1-2 missing"],
        ["o", "d"],
    ]
    assert rs.status("s2") == "gaps"
    rs.add(fs[1:3])  # the missing frames arrive late (a spool replay): the gap closes
    assert rs.status("s2") == "complete"
    assert not [i for i in rs.frames("s2") if isinstance(i, Gap)]


def test_split_utf8_survives_and_asciinema_cat_prints_exact_bytes(tmp_path: Path) -> None:
    rs = RecordingStore(tmp_path)
    text = "héllo wörld ✓ \x1b[1mbold\x1b[0m\r\n".encode()
    chunks = [text[i : i + 3] for i in range(0, len(text), 3)]  # splits multi-byte chars
    rs.add(frames("s3", chunks))
    cast = tmp_path / "s3.cast"
    cast.write_text("\n".join(to_asciicast(rs.frames("s3"))) + "\n")
    out = subprocess.run([ASCIINEMA, "cat", str(cast)], capture_output=True, check=True)
    assert out.stdout == text


def test_large_recording_compresses_and_seeks(tmp_path: Path) -> None:
    rs = RecordingStore(tmp_path)
    sid = "big"
    line = b"drwxr-xr-x 2 root root 4096 Nov 28 12:00 some-directory-name\r\n"
    batch = []
    for i in range(3000):  # ~60 s of a busy interactive session, about 5 MB
        batch.append(Frame(session_id=sid, seq=i, t=i * 0.02, kind="o", data=line * 28))
    batch.append(Frame(session_id=sid, seq=3000, t=60.0, kind="x", data=b"0"))
    rs.add(batch)
    raw = sum(len(f.data) for f in batch)
    assert rs.disk_bytes(sid) < raw * 0.15
    later = list(rs.frames(sid, from_t=40.0))
    assert later[0].t >= 40.0 and later[0].seq == 2000


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "..", "x" * 129, "é"])
def test_unsafe_session_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="unsafe session id"):
        RecordingStore(tmp_path).dir_for(bad)


def _stack_search_text(doc: dict) -> str:
    """How the search text was first defined (a stack of pending values): the index's
    word order, which phrase queries depend on, must stay this one."""
    out: list[str] = []
    stack = [v for k, v in doc.items() if k not in ("id", "time", "chain", "code",
                                                      "credential_id", "session_id")]  # fmt: skip
    while stack:
        v = stack.pop()
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        else:
            out.append(v if isinstance(v, str) else str(v))
    return " ".join(out)


def test_search_text_keeps_its_word_order_for_phrase_queries(tmp_path: Path) -> None:
    docs = [
        {"id": "1", "type": "kube.request", "user": "ann", "verb": "get", "n": 3, "f": 1.5,
         "ok": True, "none": None, "path": "/api/v1/pods/web-0", "code": "X",
         "nested": {"a": ["x", {"b": "y", "c": [1, False, None, "z"]}], "d": {}}, "e": []},
        {"id": "2", "type": "ssh.exec", "identity": {"user": "bob", "roles": ["r1", "r2"]},
         "command": ["ls", "-l"], "labels": {"team": "infra"}},
    ]  # fmt: skip
    for doc in docs:
        assert _search_text(doc) == _stack_search_text(doc)
    store = SQLiteAuditStore(tmp_path / "a.db")
    store.add_many([{**d, "time": "2026-11-29T00:00:00.000000Z"} for d in docs])
    assert [e["id"] for e in store.search(EventQuery(q="pods/web-0")).items] == ["1"]
    assert [e["id"] for e in store.search(EventQuery(q="r1 r2")).items] == ["2"]
    # values are indexed last to first: "verb, user" reads "get ann", never "ann get"
    assert [e["id"] for e in store.search(EventQuery(q="get/ann")).items] == ["1"]
    assert store.search(EventQuery(q="ann/get")).items == []


def test_redelivered_events_add_no_index_words_or_session_changes(tmp_path: Path) -> None:
    store = SQLiteAuditStore(tmp_path / "a.db")
    first = Event(type="session.start", session_id="s1", user="ann", title="deploy-zebra")
    assert store.add_many([first.to_dict()]) == 1
    late = Event(type="session.start", session_id="s1", user="ann", title="other-title")
    again = {**first.to_dict(), "title": "changed-in-flight"}  # same id: ignored entirely
    assert store.add_many([again, late.to_dict(), again]) == 1
    assert store.count() == 2
    assert store.search(EventQuery(q="changed-in-flight")).items == []
    fts = store._db.execute(
        "SELECT count(*) FROM events_fts WHERE events_fts MATCH 'zebra'"
    ).fetchone()[0]
    assert fts == 1
    assert store.session("s1")["title"] == "other-title"
    assert store.get(first.id)["title"] == "deploy-zebra"


def test_audit_log_with_the_earlier_fts_layout_opens_and_searches(tmp_path: Path) -> None:
    """A log made before the index dropped its per-row sizes (columnsize) keeps its
    table: the store opens it, adds to it and finds old and new events alike."""
    import sqlite3

    from auditcast.storage import sqlite as audit_sqlite

    earlier = audit_sqlite.SCHEMA.replace(
        "text, content='', tokenize='unicode61', columnsize=0",
        "text, content='', tokenize='unicode61'",
    )
    assert earlier != audit_sqlite.SCHEMA
    db = sqlite3.connect(tmp_path / "a.db")
    db.executescript(earlier)
    db.close()
    old = SQLiteAuditStore(tmp_path / "a.db")
    old.add(Event(type="ssh.exec", user="ann", command="cat /etc/shadow"))
    old.close()
    store = SQLiteAuditStore(tmp_path / "a.db")
    store.add(Event(type="ssh.exec", user="bob", command="tail /etc/shadow"))
    assert sorted(e["user"] for e in store.search(EventQuery(q="etc/shadow")).items) == [
        "ann",
        "bob",
    ]
    (ddl,) = store._db.execute("SELECT sql FROM sqlite_master WHERE name = 'events_fts'").fetchone()
    assert "columnsize" not in ddl


def test_words_of_new_events_find_them_when_a_batch_mixes_in_stored_ones(tmp_path: Path) -> None:
    """A batch with an already stored event between new ones: each new event's words
    find that event (not a neighbour), the stored one gains no words, a batch of only
    stored events changes nothing."""
    store = SQLiteAuditStore(tmp_path / "a.db")
    stored = Event(type="ssh.exec", user="ann", command="alpha")
    assert store.add(stored) == 1
    bravo = Event(type="ssh.exec", user="bob", command="bravo")
    charlie = Event(type="ssh.exec", user="cat", command="charlie")
    resent = {**stored.to_dict(), "command": "alphaagain"}
    assert store.add_many([bravo.to_dict(), resent, charlie.to_dict()]) == 2
    assert [e["id"] for e in store.search(EventQuery(q="bravo")).items] == [bravo.id]
    assert [e["id"] for e in store.search(EventQuery(q="charlie")).items] == [charlie.id]
    assert [e["id"] for e in store.search(EventQuery(q="alpha")).items] == [stored.id]
    assert store.search(EventQuery(q="alphaagain")).items == []
    assert store.add_many([resent, bravo.to_dict()]) == 0
    assert store.count() == 3
    later = Event(type="ssh.exec", user="dan", command="delta")
    assert store.add(later) == 1
    assert [e["id"] for e in store.search(EventQuery(q="delta")).items] == [later.id]


def test_words_after_a_nul_character_in_a_value_are_found(tmp_path: Path) -> None:
    """A NUL inside a value separates words like a blank: the words after it are
    indexed as well, in a batch of new events and in one mixed with a stored event."""
    store = SQLiteAuditStore(tmp_path / "a.db")
    nul = Event(type="ssh.exec", user="ann", command="printf first\x00second")
    plain = Event(type="ssh.exec", user="bob", command="echo third")
    assert store.add_many([nul.to_dict(), plain.to_dict()]) == 2
    later = Event(type="ssh.exec", user="cat", command="echo fourth\x00fifth")
    assert store.add_many([plain.to_dict(), later.to_dict()]) == 1
    for word, event in (("second", nul), ("third", plain), ("fifth", later)):
        assert [e["id"] for e in store.search(EventQuery(q=word)).items] == [event.id]


def test_a_batch_makes_the_same_rows_in_one_statement_as_row_by_row(tmp_path: Path) -> None:
    """The batch insert reads its rows from JSON inside SQLite: escapes, quotes,
    non-ASCII text, absent and empty fields come out exactly as bound one by one."""
    import dataclasses

    from auditcast.storage.sqlite import prepare_events

    tricky = ['quote " and \\ back', "tab\tnew\nline\x1b[0m", "é ü ß 漢字 😀", "\u2028\u2029", ""]
    docs = [
        Event(type="ssh.exec", user=t or None, node=t, command=f"echo {t}",
              identity={"user": f"sso {t}"} if i % 2 else None).to_dict()
        for i, t in enumerate(tricky)
    ]  # fmt: skip
    texts = [orjson.dumps(d).decode() if i % 2 else None for i, d in enumerate(docs)]
    batch = prepare_events(docs, texts)
    assert batch.rows_json is not None
    one, rowwise = SQLiteAuditStore(tmp_path / "one.db"), SQLiteAuditStore(tmp_path / "rows.db")
    assert one.write(batch) == len(docs)
    assert rowwise.write(dataclasses.replace(batch, rows_json=None, texts_json=None)) == len(docs)
    query = "SELECT *, typeof(user), typeof(code) FROM events ORDER BY seq"
    made = [tuple(r) for r in one._db.execute(query)]
    assert made == [tuple(r) for r in rowwise._db.execute(query)]
    assert [r[-1] for r in made] == ["text"] * len(docs)  # code filled, never NULL
    for t in ("漢字", "ß", "back"):
        assert len(one.search(EventQuery(q=t)).items) == 1


def test_a_batch_beyond_the_json_size_limit_is_stored_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose JSON would exceed what SQLite takes as one value is written a row
    at a time: all of it stored and searchable, none refused."""
    from auditcast.storage import sqlite as audit_sqlite

    monkeypatch.setattr(audit_sqlite, "JSON_BATCH_MAX_BYTES", 1000)
    docs = [
        Event(type="ssh.exec", user="ann", command=f"echo word{i}").to_dict() for i in range(20)
    ]
    batch = audit_sqlite.prepare_events(docs)
    assert batch.rows_json is None
    store = SQLiteAuditStore(tmp_path / "a.db")
    assert store.write(batch) == 20
    assert [e["id"] for e in store.search(EventQuery(q="word7")).items] == [docs[7]["id"]]
