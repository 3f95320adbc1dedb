"""msgspec's reading of an envelope (`plain_envelope`, and the check inside
`decode_event_json`) against the Python checks it stands in for: it may only say "plainly
valid" where `plainly_valid_event` over orjson's dict says so too, and where it says
nothing the old way decides, so every record is accepted, refused (with the same
message) or sent to pydantic exactly as before."""

from __future__ import annotations

import copy
import random
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec
import orjson
import pytest

from auditcast.codes import CODE_BY_TYPE
from auditcast.errors import MalformedMessage
from auditcast.events import (
    Event,
    Source,
    _event_object,
    _validated,
    decode_event_json,
    plain_envelope,
    plainly_valid_event,
)
from tests.storage.test_event_fast_path import full_event

# --- plainly_valid_event as it was before msgspec (commit 828b729), the reference ------

_TEXT = ("id", "code")
_OPTIONAL_TEXT = ("user", "credential_id", "cluster", "node", "session_id")
_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z", re.ASCII)
_NESTED: dict[str, tuple[frozenset[str], str, Any]] = {
    "identity": (
        frozenset({"user", "sso_subject", "sso_issuer", "email", "groups", "roles"}),
        "user",
        frozenset({"groups", "roles"}),
    ),
    "source": (frozenset({"collector", "instance", "remote_addr", "user_agent"}), "collector", ()),
    "chain": (frozenset({"prev", "hash"}), "hash", ()),
}


def reference_plainly_valid(data: dict[str, Any]) -> bool:
    get = data.get
    event_type = get("type")
    if type(event_type) is not str or event_type not in CODE_BY_TYPE:
        return False
    time = get("time")
    if type(time) is not str or _CANONICAL_TIME.match(time) is None:
        return False
    try:
        datetime.fromisoformat(time)
    except ValueError:
        return False
    for name in _OPTIONAL_TEXT:
        v = get(name)
        if v is not None and type(v) is not str:
            return False
    for name in _TEXT:
        if name in data and type(data[name]) is not str:
            return False
    if "labels" in data:
        labels = data["labels"]
        if type(labels) is not dict:
            return False
        for v in labels.values():
            if type(v) is not str:
                return False
    for name, (fields, required, text_lists) in _NESTED.items():
        sub = get(name)
        if sub is None:
            continue
        if type(sub) is not dict or type(sub.get(required)) is not str:
            return False
        for key, v in sub.items():
            if key not in fields:
                return False
            if key in text_lists:
                if type(v) is not list:
                    return False
                for item in v:
                    if type(item) is not str:
                        return False
            elif v is not None and type(v) is not str:
                return False
    return True


def reference_decode(raw: bytes) -> tuple[str, Any]:
    """What `decode_event_json` answered before: ("plain", doc), ("model", doc) or
    ("error", message)."""
    try:
        data = _event_object(raw)
        if reference_plainly_valid(data):
            return "plain", data
        _validated(data)
        return "model", data
    except MalformedMessage as e:
        return "error", e.message


def decoded(raw: bytes) -> tuple[str, Any]:
    try:
        event, doc = decode_event_json(raw)
    except MalformedMessage as e:
        return "error", e.message
    return ("plain" if event is None else "model"), doc


# --- the corpus ------------------------------------------------------------------------


ODD_VALUES: list[Any] = [
    None, 0, 1, -1, 1.5, True, False, "", "x", "é", [], ["a"], [1], [None], {}, {"a": 1},
    {"a": "b"}, {"user": "u"}, {"collector": "c"}, {"hash": "h"}, 2**63 - 1, 1e300,
]  # fmt: skip
TIMES = [
    "2026-11-29T00:26:52.334806Z",
    "2026-13-29T00:26:52.334806Z",
    "2026-02-30T00:26:52.334806Z",
    "2024-02-29T00:26:52.334806Z",
    "2026-02-29T00:26:52.334806Z",
    "0000-01-01T00:00:00.000000Z",
    "2026-11-29T00:26:52.3348060",
    "2026-11-29T00:26:52Z",
    "2026-11-29T00:26:52.334806+01:00",
    "2026-11-29 00:26:52.334806Z",
    "2026-11-29T24:00:00.000000Z",
    "2026-11-29T00:26:60.000000Z",
    "2026-11-29T00:26:52.334806Z\n",
    "२०२६-11-29T00:26:52.334806Z",
]


def doc_variants() -> list[dict[str, Any]]:
    """The full envelope with each field and nested field set to values of every JSON
    kind or removed, with odd times and types, and with unknown fields."""
    base = full_event()
    out = [base, {"type": "user.login", "time": base["time"]}]
    for key in [*base, "unknown"]:
        for v in ODD_VALUES:
            d = copy.deepcopy(base)
            d[key] = v
            out.append(d)
        d = copy.deepcopy(base)
        d.pop(key, None)
        out.append(d)
    for key in ("identity", "source", "chain", "labels"):
        for sub in [*base[key], "unexpected"]:
            for v in ODD_VALUES:
                d = copy.deepcopy(base)
                d[key][sub] = v
                out.append(d)
            d = copy.deepcopy(base)
            d[key].pop(sub, None)
            out.append(d)
    for t in TIMES:
        out.append({**copy.deepcopy(base), "time": t})
    for t in ("no.such.type", "session.start", "session.end", "ssh.exec", "KUBE.REQUEST"):
        out.append({**copy.deepcopy(base), "type": t})
    return out


def text_variants() -> list[bytes]:
    """Records no dict can express: repeated keys, escaped keys, text orjson refuses
    (not UTF-8, surrogates, numbers beyond a double), nesting, trailing text."""
    body = orjson.dumps(full_event())[1:-1]
    plain = b"{" + body + b"}"
    t = full_event()["time"].encode()
    out = [plain, plain + b" \n", b" \n" + plain, plain + b"x", plain + b"{}", b"[" + plain + b"]"]
    for extra in [
        b'"user":5',  # repeated keys: orjson keeps the last, msgspec checks each
        b'"user":"bob"',
        b'"user":null',
        b'"type":"no.such.type"',
        b'"type":"session.start"',
        b'"time":"2026-02-30T00:00:00.000000Z"',
        b'"time":"' + t + b'"',
        b'"identity":{"user":"a","zz":1}',
        b'"identity":null',
        b'"labels":{"a":1}',
        b'"labels":{"a":"b","a":2}',
        b'"us\\u0065r":5',  # an escaped key is the same key
        b'"t\\u0079pe":"nope"',
        b'"identity":{"us\\u0065r":"a"}',
        b'"code":""',
        b'"code":null',
        b'"x":"\xff\xfe"',  # not UTF-8
        b'"x":"\xc0\xaf"',  # overlong
        b'"x":"\xed\xa0\x80"',  # an encoded surrogate
        b'"x":"\\ud800"',  # an escaped lone surrogate
        b'"user":"\\ud800"',
        b'"x":"\\ud83d\\ude00"',
        b'"x":"\xc3\xa9"',  # UTF-8, not ASCII
        b'"x":1e400',
        b'"x":-1E400',
        b'"x":[2e308]',
        b'"x": 1.5e3',
        b'"x":1e5',
        b'"x":' + b"1" * 400,
        b'"x":' + b"9" * 400 + b".5",
        b'"x":123456789012345678901234567890',
        b'"x":0.' + b"0" * 400 + b"1",
        b'"x":NaN',
        b'"x":Infinity',
        b'"x":01',
        b'"x":"a\x01b"',
        b'"x":"\\q"',
        b'"x":' + b"[" * 600 + b"]" * 600,
        b'"x":' + b"[" * 790 + b"]" * 790,  # as deep as a record under PLAIN_MAX_BYTES goes
        b'"x":' + b"[" * 1000 + b"]" * 1000,
        b'"x":' + b"[" * 2000 + b"]" * 2000,
        b'"x":"1e400"',
        b'"x":"null"',
        b'"x":true',
        b'"":1',
    ]:
        out.append(b"{" + body + b"," + extra + b"}")
        out.append(b"{" + extra + b"," + body + b"}")
    out += [
        b"",
        b"null",
        b"[]",
        b'"x"',
        b"{}",
        b"\xef\xbb\xbf" + plain,
        plain.decode().encode("utf-16"),
    ]
    return out


CORPUS = [orjson.dumps(d) for d in doc_variants()] + text_variants()


def _id(raw: bytes) -> str:
    return repr(raw[-50:])


# --- the properties --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def deep_compare() -> Iterator[None]:
    """Comparing the 1,000-deep documents of the corpus needs more than Python's default
    recursion limit."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    yield
    sys.setrecursionlimit(old)


@pytest.mark.parametrize("raw", CORPUS, ids=_id)
def test_decode_event_json_decides_as_before(raw: bytes) -> None:
    assert decoded(raw) == reference_decode(raw)


@pytest.mark.parametrize("raw", CORPUS, ids=_id)
def test_plain_envelope_answers_only_for_records_the_dict_way_calls_plain(raw: bytes) -> None:
    env = plain_envelope(raw)
    if env is None:
        return
    kind, doc = reference_decode(raw)
    assert kind == "plain"
    assert_reads_as(env, doc)


def assert_reads_as(value: Any, json_value: Any) -> None:
    """`value` (msgspec's reading) holds what orjson read, defaults where it has nothing."""
    if not isinstance(value, msgspec.Struct):
        assert value == json_value
        return
    assert type(json_value) is dict
    for field in msgspec.structs.fields(value):
        got = getattr(value, field.name)
        if field.name in json_value:
            assert_reads_as(got, json_value[field.name])
        elif field.default_factory is not msgspec.NODEFAULT:
            assert got == field.default_factory()
        else:
            assert got is field.default


@pytest.mark.parametrize("doc", doc_variants()[:200], ids=lambda d: orjson.dumps(d).decode()[-50:])
def test_plainly_valid_event_decides_as_before(doc: dict[str, Any]) -> None:
    assert plainly_valid_event(doc) == reference_plainly_valid(doc)


def test_python_values_json_cannot_carry_still_go_to_pydantic() -> None:
    """`plainly_valid_event` is asked about dicts, not text: exact types only."""

    class Text(str):
        pass

    base = full_event()
    for odd in (
        {"user": Text("a")},
        {"labels": {"a": Text("b")}},
        {"identity": {"user": "a", "groups": ("dev",)}},
        {"source": {"collector": True}},
    ):
        doc = {**base, **odd}
        assert plainly_valid_event(doc) is False
        assert reference_plainly_valid(doc) is False


def test_mutated_records_never_take_a_way_they_did_not_before() -> None:
    """Bytes flipped, cut out, repeated and inserted in real envelopes (seeded)."""
    rnd = random.Random(20261129)
    seeds = [orjson.dumps(d) for d in doc_variants()[:40]] + text_variants()[:6]
    alphabet = b'{}[]:,"\\ -.0123456789eEnulltrufas\xff\xc3\xa9\x00\n'
    plain_seen = 0
    for _ in range(6000):
        raw = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(raw) + 1)
            op = rnd.randrange(4)
            if op == 0 and i < len(raw):
                raw[i] = rnd.choice(alphabet)
            elif op == 1:
                raw[i:i] = bytes([rnd.choice(alphabet)])
            elif op == 2:
                del raw[i : i + rnd.randint(1, 8)]
            else:
                j = rnd.randrange(len(raw) + 1)
                raw[i:i] = raw[min(i, j) : max(i, j)][:40]
        data = bytes(raw)
        expected = reference_decode(data)
        assert decoded(data) == expected, data
        if plain_envelope(data) is not None:
            plain_seen += 1
            assert expected[0] == "plain", data
    assert plain_seen > 100  # the property was exercised, not vacuous


def test_what_collectors_and_the_worker_write_is_read_without_the_dict() -> None:
    written = [
        full_event(),
        Event(type="session.start", session_id="s", user="bob", source=Source(collector="pty")),
        Event(type="user.login", user="bob"),
        Event(
            type="kube.request",
            user="user1",
            credential_id="cred-1",
            cluster="prod",
            source=Source(collector="kube", instance="gw-1", remote_addr="10.0.0.7"),
            verb="get",
            request_path="/api/v1/namespaces/default/pods/web-1",
            response_code=200,
            latency_ms=3,
        ),
    ]
    for ev in written:
        raw = ev.to_json() if isinstance(ev, Event) else orjson.dumps(ev)
        env = plain_envelope(raw)
        assert env is not None, raw
        assert env.type == orjson.loads(raw)["type"]
        assert env.code == orjson.loads(raw)["code"]


@pytest.mark.parametrize(
    "extra",
    [
        b'"x":"\xff"',
        b'"x":"\xed\xa0\x80"',
        b'"x":1e400',
        b'"x":' + b"1" * 400,
        b'"x":' + b"[" * 1025 + b"]" * 1025,
    ],
    ids=["not UTF-8", "encoded surrogate", "1e400", "400 digits", "nested 1025 deep"],
)
def test_text_orjson_refuses_is_left_to_decode_event_json(extra: bytes) -> None:
    raw = orjson.dumps(full_event())[:-1] + b"," + extra + b"}"
    assert plain_envelope(raw) is None
    with pytest.raises(MalformedMessage, match="event is not JSON"):
        decode_event_json(raw)


def test_a_record_without_code_says_so() -> None:
    doc = full_event()
    del doc["code"]
    env = plain_envelope(orjson.dumps(doc))
    assert env is not None and env.code is msgspec.UNSET
