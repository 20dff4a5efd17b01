"""``ferroware.Headers`` / ``ferroware.MutableHeaders`` against Starlette's.

The differential part runs random sequences of operations on both
implementations from the same starting header list and requires the same
results, the same exceptions (type and message) and the same header lists after
every step. Its names and values are ones both accept; the one deliberate
difference (mutations refuse names that are not RFC 9110 tokens and values with
CR, LF or NUL) is tested on its own below, next to Starlette accepting them.
"""

from __future__ import annotations

import copy
import pickle
import string
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import pytest
import starlette.datastructures as sd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

import ferroware
from ferroware import BaseHTTPMiddleware, Headers, MutableHeaders

TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
RawList = list[tuple[bytes, bytes]]

# --------------------------------------------------------------------------- strategies

# A few names that repeat (in any case) so that lookups, replacements and
# deletions hit existing fields, plus random tokens.
COMMON = ["a", "x-id", "vary", "content-type", "set-cookie", "k"]


def _random_case(draw: st.DrawFn, name: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in name)


@st.composite
def token_names(draw: st.DrawFn) -> str:
    """A name both implementations accept for a mutation: an RFC 9110 token in mixed case."""
    if draw(st.integers(0, 3)):
        return _random_case(draw, draw(st.sampled_from(COMMON)))
    return draw(st.text(alphabet=TCHAR, min_size=1, max_size=8))


# Text that is not latin-1 (UnicodeEncodeError on both sides), and the KELVIN
# SIGN, which isn't latin-1 but lowercases to "k", so both store b"k".
UNENCODABLE_NAMES = st.sampled_from(["\u0100", "x-\u4e2d", "\U0001f600", "\u212a", "\u212aEY"])
mutation_names = st.one_of(token_names(), UNENCODABLE_NAMES)

# Field values both accept: latin-1 without CR, LF and NUL (other controls and
# non-ASCII latin-1 included), empty ones, and text that isn't latin-1 at all.
LATIN1_SAFE = st.characters(max_codepoint=0xFF, exclude_characters="\r\n\0")
safe_values = st.one_of(
    st.just(""),
    st.text(alphabet=LATIN1_SAFE, max_size=12),
    st.sampled_from(["text/plain", "Accept-Encoding", " padded ", "caf\xe9", "a\tb"]),
)
mutation_values = st.one_of(safe_values, st.sampled_from(["\u0100", "snow \u2603", "\ud800"]))

# Keys for reads: anything, reading is the same on both sides (bad names
# included, and non-str keys that fail alike).
read_keys = st.one_of(
    token_names(),
    token_names(),
    mutation_names,
    st.text(max_size=6),
    st.sampled_from(["", "X Y", "a:", "\xc9", "\xe9", 1, None, b"a"]),
)


@st.composite
def raw_lists(draw: st.DrawFn) -> RawList:
    """A starting header list as a server or app would hand it over: names of any
    case (even ones that aren't tokens) and values without CR, LF or NUL."""
    names = st.one_of(
        token_names().map(lambda n: n.encode()),
        st.sampled_from([b"X-Upper", b"x y", b"", b"\xe9t\xe9"]),
    )
    values = st.binary(max_size=10).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
    return draw(st.lists(st.tuples(names, values), max_size=8))


mappings = st.dictionaries(mutation_names, mutation_values, max_size=4)

operations = st.one_of(
    st.tuples(st.just("set"), mutation_names, mutation_values),
    st.tuples(st.just("append"), mutation_names, mutation_values),
    st.tuples(st.just("delete"), read_keys),
    st.tuples(st.just("getitem"), read_keys),
    st.tuples(st.just("get"), read_keys),
    st.tuples(st.just("get_default"), read_keys),
    st.tuples(st.just("getlist"), read_keys),
    st.tuples(st.just("contains"), read_keys),
    st.tuples(st.just("setdefault"), mutation_names, mutation_values),
    st.tuples(st.just("update"), mappings),
    st.tuples(st.just("update_headers"), mappings),
    st.tuples(st.just("or"), mappings),
    st.tuples(st.just("or_headers"), mappings),
    st.tuples(st.just("ior"), mappings),
    st.tuples(st.just("or_not_mapping"), st.sampled_from([{"a"}, [("a", "b")], 3, None])),
    st.tuples(st.just("ior_not_mapping"), st.sampled_from([{"a"}, [("a", "b")], 3, None])),
    st.tuples(st.just("vary"), mutation_values),
    st.tuples(st.just("mutablecopy")),
    st.tuples(st.just("len")),
    st.tuples(st.just("iter")),
    st.tuples(st.just("items")),
    st.tuples(st.just("keys")),
    st.tuples(st.just("values")),
    st.tuples(st.just("raw")),
    st.tuples(st.just("eq"), raw_lists()),
    st.tuples(st.just("eq_self")),
    st.tuples(st.just("eq_other_type"), st.sampled_from([[], {}, "x", None])),
    st.tuples(st.just("repr")),
    st.tuples(st.just("dict")),
)

READ_ONLY = {
    "getitem", "get", "get_default", "getlist", "contains", "mutablecopy", "len", "iter",
    "items", "keys", "values", "raw", "eq", "eq_self", "eq_other_type", "repr", "dict",
}  # fmt: skip

# --------------------------------------------------------------------------- the differential runner


class Impl:
    def __init__(self, module: Any) -> None:
        self.Headers = module.Headers
        self.MutableHeaders = module.MutableHeaders


FERRO = Impl(ferroware)
STOCK = Impl(sd)


def _normalize(value: Any) -> Any:
    """Headers objects compared by what they hold; everything else as is."""
    if isinstance(value, (sd.Headers, Headers)):
        return ("<headers>", type(value).__name__, list(value.raw), repr(value))
    return value


def apply(impl: Impl, h: Any, op: tuple[Any, ...]) -> Any:
    """Run one operation; returns ("ok", result) or ("raise", type, message)."""
    name, *args = op
    calls: dict[str, Callable[[], Any]] = {
        "set": lambda: h.__setitem__(*args),
        "append": lambda: h.append(*args),
        "delete": lambda: h.__delitem__(*args),
        "getitem": lambda: h[args[0]],
        "get": lambda: h.get(args[0]),
        "get_default": lambda: h.get(args[0], "<default>"),
        "getlist": lambda: h.getlist(args[0]),
        "contains": lambda: args[0] in h,
        "setdefault": lambda: h.setdefault(*args),
        "update": lambda: h.update(args[0]),
        "update_headers": lambda: h.update(impl.Headers(raw=_encode_for_raw(args[0]))),
        "or": lambda: h | args[0],
        "or_headers": lambda: h | impl.MutableHeaders(raw=_encode_for_raw(args[0])),
        "ior": lambda: _ior(h, args[0]),
        "or_not_mapping": lambda: h | args[0],
        "ior_not_mapping": lambda: _ior(h, args[0]),
        "vary": lambda: h.add_vary_header(args[0]),
        "mutablecopy": lambda: _mutablecopy(h),
        "len": lambda: len(h),
        "iter": lambda: list(iter(h)),
        "items": h.items,
        "keys": h.keys,
        "values": h.values,
        "raw": lambda: h.raw,
        "eq": lambda: (h == impl.Headers(raw=args[0]), h != impl.MutableHeaders(raw=list(args[0]))),
        "eq_self": lambda: (h == impl.Headers(raw=list(reversed(h.raw))), h != h.mutablecopy()),
        "eq_other_type": lambda: (h == args[0], h != args[0]),
        "repr": lambda: repr(h),
        "dict": lambda: dict(h),
    }
    try:
        result = calls[name]()
    except Exception as exc:
        return ("raise", type(exc), str(exc))
    return ("ok", _normalize(result))


def _encode_for_raw(mapping: Mapping[str, str]) -> RawList:
    """Raw fields from a mapping, skipping what doesn't encode (the mapping is test input)."""
    out = []
    for k, v in mapping.items():
        try:
            out.append((k.lower().encode("latin-1"), v.encode("latin-1")))
        except UnicodeEncodeError:
            continue
    return out


def _ior(h: Any, other: Any) -> Any:
    before = h
    h |= other
    return ("same object", h is before)


def _mutablecopy(h: Any) -> Any:
    c = h.mutablecopy()
    return (_normalize(c), c.raw is h.raw)


def run_differential(start: RawList, ops: list[tuple[Any, ...]], *, mutable: bool, via_scope: bool) -> None:
    ferro_list, stock_list = list(start), list(start)
    if via_scope:
        ferro_scope: dict[str, Any] = {"headers": tuple(ferro_list)}
        stock_scope: dict[str, Any] = {"headers": tuple(stock_list)}
        cls_f, cls_s = (FERRO.MutableHeaders, STOCK.MutableHeaders) if mutable else (FERRO.Headers, STOCK.Headers)
        fh, sh = cls_f(scope=ferro_scope), cls_s(scope=stock_scope)
        ferro_list, stock_list = ferro_scope["headers"], stock_scope["headers"]
        assert type(ferro_list) is list
    elif mutable:
        fh, sh = FERRO.MutableHeaders(raw=ferro_list), STOCK.MutableHeaders(raw=stock_list)
    else:
        fh, sh = FERRO.Headers(raw=ferro_list), STOCK.Headers(raw=stock_list)

    for step, op in enumerate(ops):
        if not mutable and op[0] not in READ_ONLY:
            # Headers has no mutation methods: both fail the same way.
            assert not hasattr(fh, "append") and not hasattr(sh, "append")
            continue
        got = apply(FERRO, fh, op)
        want = apply(STOCK, sh, op)
        event(f"{op[0]}: {want[0]} {want[1].__name__ if want[0] == 'raise' else ''}".rstrip())
        assert got == want, f"step {step}: {op!r}\nferroware: {got!r}\nstarlette: {want!r}"
        # The same fields, in the list each was built over (edited in place).
        assert ferro_list == stock_list, f"step {step}: {op!r}"
        assert fh.raw == sh.raw
        if mutable:
            assert fh.raw is ferro_list
        else:
            assert fh.raw is not ferro_list


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(start=raw_lists(), ops=st.lists(operations, max_size=25), via_scope=st.booleans())
def test_mutable_headers_match_starlette(start: RawList, ops: list[tuple[Any, ...]], via_scope: bool) -> None:
    run_differential(start, ops, mutable=True, via_scope=via_scope)


@SETTINGS
@given(start=raw_lists(), ops=st.lists(operations, max_size=15), via_scope=st.booleans())
def test_headers_match_starlette(start: RawList, ops: list[tuple[Any, ...]], via_scope: bool) -> None:
    run_differential(start, ops, mutable=False, via_scope=via_scope)


@SETTINGS
@given(mapping=mappings, ops=st.lists(operations, max_size=10))
def test_built_from_a_mapping_match_starlette(mapping: dict[str, str], ops: list[tuple[Any, ...]]) -> None:
    for cls_f, cls_s in [(Headers, sd.Headers), (MutableHeaders, sd.MutableHeaders)]:
        try:
            fh: Any = cls_f(mapping)
        except Exception as exc:
            with pytest.raises(type(exc)):
                cls_s(mapping)
            continue
        sh: Any = cls_s(mapping)
        assert fh.raw == sh.raw
        assert repr(fh) == repr(sh)
        for op in ops:
            if cls_f is Headers and op[0] not in READ_ONLY:
                continue
            assert apply(FERRO, fh, op) == apply(STOCK, sh, op), op
            assert fh.raw == sh.raw


# --------------------------------------------------------------------------- examples and edge cases


def test_starlette_examples() -> None:
    h = Headers(raw=[(b"a", b"123"), (b"a", b"456"), (b"b", b"789")])
    assert "A" in h and "c" not in h
    assert h["a"] == "123" and h.get("nope") is None
    assert h.getlist("a") == ["123", "456"]
    assert h.keys() == ["a", "a", "b"] and list(h) == ["a", "a", "b"]
    assert dict(h) == {"a": "123", "b": "789"}
    assert repr(h) == "Headers(raw=[(b'a', b'123'), (b'a', b'456'), (b'b', b'789')])"
    assert h == Headers(raw=[(b"a", b"123"), (b"b", b"789"), (b"a", b"456")])
    assert h != [(b"a", b"123"), (b"a", b"456"), (b"b", b"789")]
    assert repr(Headers({"a": "123", "b": "789"})) == "Headers({'a': '123', 'b': '789'})"


def test_abc_registration_and_types() -> None:
    h, m = Headers(), MutableHeaders()
    assert isinstance(h, Mapping) and not isinstance(h, MutableMapping)
    # Like Starlette's: a Mapping, not a full MutableMapping (no pop/popitem/clear).
    assert isinstance(m, Mapping) and not isinstance(m, MutableMapping)
    assert isinstance(m, Headers)
    assert ferroware.Headers is ferroware._core.Headers
    assert ferroware.MutableHeaders is ferroware._core.MutableHeaders
    assert type(m.mutablecopy()) is MutableHeaders and type(h.mutablecopy()) is MutableHeaders
    with pytest.raises(TypeError):
        hash(h)
    with pytest.raises(TypeError):
        reversed(h)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        h | {}  # type: ignore[operator]
    with pytest.raises(TypeError):
        {} | m  # type: ignore[operator]
    assert not m  # empty: falsy, like Starlette's (UploadFile relies on it)


def test_constructor_assertions_match_starlette() -> None:
    cases: list[dict[str, Any]] = [
        {"headers": {}, "raw": []},
        {"headers": {}, "scope": {"headers": []}},
        {"raw": [], "scope": {"headers": []}},
    ]
    for kwargs in cases:
        for cls in (Headers, MutableHeaders):
            with pytest.raises(AssertionError) as ours:
                cls(**kwargs)
            with pytest.raises(AssertionError) as theirs:
                getattr(sd, cls.__name__)(**kwargs)
            assert str(ours.value) == str(theirs.value)
    with pytest.raises(KeyError):
        MutableHeaders(scope={})
    with pytest.raises(KeyError):
        sd.MutableHeaders(scope={})


def test_raw_list_is_shared() -> None:
    lst = [(b"content-type", b"text/plain")]
    m = MutableHeaders(raw=lst)
    m["x-a"] = "1"
    m.append("x-b", "2")
    del m["content-type"]
    assert lst == [(b"x-a", b"1"), (b"x-b", b"2")]
    assert m.raw is lst
    lst.append((b"x-c", b"3"))  # and the other way round: no stale copy
    assert m["x-c"] == "3"
    # Headers.raw is a copy, as in Starlette.
    h = Headers(raw=lst)
    assert h.raw == lst and h.raw is not lst


def test_scope_headers_replaced_by_a_fresh_list_like_starlette() -> None:
    shared = [(b"a", b"1")]
    for cls in (MutableHeaders, sd.MutableHeaders):
        message: dict[str, Any] = {"type": "http.response.start", "status": 200, "headers": shared}
        m = cls(scope=message)
        m.append("b", "2")
        # The edit is in message["headers"] (a new list put in its place): a
        # header list shared by several messages is never edited through one.
        assert message["headers"] == [(b"a", b"1"), (b"b", b"2")]
        assert message["headers"] is not shared
        assert m.raw is message["headers"]
    assert shared == [(b"a", b"1")]


def test_mutable_headers_need_a_list_for_raw() -> None:
    # A deliberate difference: Starlette keeps the tuple, then fails on the first edit.
    with pytest.raises(TypeError, match="needs a list"):
        MutableHeaders(raw=((b"a", b"1"),))  # type: ignore[arg-type]
    theirs = sd.MutableHeaders(raw=((b"a", b"1"),))  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        theirs.append("b", "2")
    # Read-only Headers take any iterable of pairs, as Starlette's do.
    assert Headers(raw=((b"a", b"1"),)).items() == [("a", "1")]  # type: ignore[arg-type]


def test_unusual_raw_items_read_like_starlette() -> None:
    raw: Any = [[b"A", b"1"], (bytearray(b"b"), b"2"), (b"c", bytearray(b"3"))]
    ours, theirs = MutableHeaders(raw=list(raw)), sd.MutableHeaders(raw=list(raw))
    for op in [("getitem", "b"), ("getlist", "c"), ("items",), ("contains", "A"), ("repr",)]:
        assert apply(FERRO, ours, op) == apply(STOCK, theirs, op)
    ours["c"] = "x"
    theirs["c"] = "x"
    assert ours.raw == theirs.raw
    for bad in ([(b"a",)], [(b"a", b"1", b"2")], [3]):
        assert apply(FERRO, Headers(raw=bad), ("getitem", "a")) == apply(STOCK, sd.Headers(raw=bad), ("getitem", "a"))


def test_pickle_and_copy() -> None:
    lst = [(b"a", b"1"), (b"a", b"2")]
    m = MutableHeaders(raw=lst)
    assert pickle.loads(pickle.dumps(m)) == m
    assert type(pickle.loads(pickle.dumps(m))) is MutableHeaders
    assert copy.copy(m).raw is lst  # shares the list, like copy.copy of Starlette's
    assert copy.deepcopy(m).raw is not lst and copy.deepcopy(m) == m


def test_subclass_from_python() -> None:
    class Mine(MutableHeaders):
        pass

    m = Mine({"a": "1"})
    m["b"] = "2"
    assert repr(m) == "Mine({'a': '1', 'b': '2'})"
    assert type(m.mutablecopy()) is MutableHeaders


# --------------------------------------------------------------------------- the security rule

BAD_NAMES = ["x y", "x:y", "x\ty", "", "(x)", 'x"y', "x/y", "\xe9", "x\r\nInjected: 1", "a\0", "x,y", "x@y"]
BAD_VALUES = ["a\r\nSet-Cookie: evil=1", "a\rb", "a\nb", "a\0b", "\r", "\n", "\0"]
MUTATIONS: dict[str, Callable[[Any, str, str], Any]] = {
    "setitem": lambda h, k, v: h.__setitem__(k, v),
    "append": lambda h, k, v: h.append(k, v),
    "setdefault": lambda h, k, v: h.setdefault(k, v),
    "update": lambda h, k, v: h.update({k: v}),
    "or": lambda h, k, v: h | {k: v},
    "ior": lambda h, k, v: h.__ior__({k: v}),
    "constructor": lambda h, k, v: type(h)({k: v}),
}


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(how: str, name: str) -> None:
    lst = [(b"a", b"1")]
    with pytest.raises(ValueError, match=r"invalid header name .*RFC 9110 token"):
        MUTATIONS[how](MutableHeaders(raw=lst), name, "v")
    assert lst == [(b"a", b"1")]  # nothing changed
    # Starlette takes it (the encoded name goes on the wire as is).
    theirs = sd.MutableHeaders(raw=[(b"a", b"1")])
    result = MUTATIONS[how](theirs, name, "v")
    fields = (result if isinstance(result, sd.Headers) else theirs).raw
    assert (name.lower().encode("latin-1"), b"v") in fields


@pytest.mark.parametrize("how", MUTATIONS)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_bad_values_are_refused(how: str, value: str) -> None:
    lst = [(b"a", b"1")]
    with pytest.raises(ValueError, match=r"invalid value for header 'x-a': it contains (CR|LF|NUL)"):
        MUTATIONS[how](MutableHeaders(raw=lst), "X-A", value)
    assert lst == [(b"a", b"1")]
    theirs = sd.MutableHeaders(raw=[(b"a", b"1")])
    result = MUTATIONS[how](theirs, "X-A", value)
    fields = (result if isinstance(result, sd.Headers) else theirs).raw
    assert (b"x-a", value.encode("latin-1")) in fields


def test_messages_name_the_problem() -> None:
    m = MutableHeaders()
    with pytest.raises(ValueError, match=r"""invalid header name 'x y': character ' ' at position 1"""):
        m["x y"] = "1"
    with pytest.raises(ValueError, match=r"invalid header name '': empty"):
        m[""] = "1"
    with pytest.raises(ValueError, match=r"contains CR \(\\r\) at position 1"):
        m["a"] = "b\rc"
    with pytest.raises(ValueError, match=r"contains LF \(\\n\) at position 0"):
        m.append("a", "\nc")
    with pytest.raises(ValueError, match=r"contains NUL \(\\0\) at position 2"):
        m.setdefault("a", "bc\0")


def test_add_vary_header_is_checked_too() -> None:
    m = MutableHeaders()
    with pytest.raises(ValueError, match="CR"):
        m.add_vary_header("Accept\r\nX-Evil: 1")
    assert m.raw == []
    # A stored vary value with a line break (read from raw) can't be carried into a new one.
    m = MutableHeaders(raw=[(b"vary", b"a\nb")])
    with pytest.raises(ValueError, match="LF"):
        m.add_vary_header("Origin")
    assert m.raw == [(b"vary", b"a\nb")]
    s = sd.MutableHeaders(raw=[(b"vary", b"a\nb")])
    s.add_vary_header("Origin")
    assert s.raw == [(b"vary", b"a\nb, Origin")]


def test_setdefault_checks_even_when_present() -> None:
    m = MutableHeaders({"a": "1"})
    with pytest.raises(ValueError):
        m.setdefault("a", "x\r\n")
    with pytest.raises(ValueError):
        m.setdefault("a b", "x")


def test_update_applies_fields_up_to_the_bad_one_like_starlette() -> None:
    # Starlette's update is a loop of __setitem__: what comes before a failing
    # field stays applied. Same here, with the failure being ours.
    ours, theirs = MutableHeaders(), sd.MutableHeaders()
    with pytest.raises(ValueError):
        ours.update({"a": "1", "b c": "2", "d": "3"})
    with pytest.raises(UnicodeEncodeError):
        theirs.update({"a": "1", "b\u0100": "2", "d": "3"})
    assert ours.raw == theirs.raw == [(b"a", b"1")]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.text(alphabet=TCHAR, max_size=4),
    bad=st.characters(max_codepoint=0xFF).filter(lambda c: c not in TCHAR),
    suffix=st.text(alphabet=TCHAR, max_size=4),
)
def test_any_non_token_name_is_refused(prefix: str, bad: str, suffix: str) -> None:
    name = prefix + bad + suffix
    m = MutableHeaders()
    for how in ("setitem", "append", "setdefault", "update", "or", "ior"):
        with pytest.raises(ValueError):
            MUTATIONS[how](m, name, "v")
    assert m.raw == []


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.text(alphabet=LATIN1_SAFE, max_size=6),
    bad=st.sampled_from("\r\n\0"),
    suffix=st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=6),
)
def test_any_value_with_cr_lf_nul_is_refused(prefix: str, bad: str, suffix: str) -> None:
    m = MutableHeaders()
    for how in ("setitem", "append", "setdefault", "update", "or", "ior"):
        with pytest.raises(ValueError):
            MUTATIONS[how](m, "x", prefix + bad + suffix)
    with pytest.raises(ValueError):
        m.add_vary_header(prefix + bad + suffix)
    assert m.raw == []


@settings(max_examples=200, deadline=None)
@given(
    raw=st.lists(
        st.tuples(st.binary(max_size=6), st.binary(max_size=6)).filter(lambda kv: kv[0] != b"vary"),
        max_size=6,
    ),
    key=st.text(max_size=4),
)
def test_reading_is_unchanged_for_any_bytes(raw: RawList, key: str) -> None:
    """Fields with CR/LF/NUL or non-token names in the list are read exactly like Starlette's."""
    ours, theirs = MutableHeaders(raw=list(raw)), sd.MutableHeaders(raw=list(raw))
    for op in [("items",), ("repr",), ("getitem", key), ("getlist", key), ("contains", key), ("len",), ("dict",)]:
        assert apply(FERRO, ours, op) == apply(STOCK, theirs, op)
    # And a valid edit works alongside them.
    ours["ok"] = "1"
    theirs["ok"] = "1"
    assert ours.raw == theirs.raw


# --------------------------------------------------------------------------- call_next's response


async def _serve(app: Any) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b"", "root_path": ""}
    await app(scope, receive, send)
    return sent


@pytest.mark.anyio
async def test_call_next_response_headers_edit_the_sent_list() -> None:
    seen: list[Any] = []

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"x-drop": "1"})

    async def dispatch(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        headers = response.headers
        seen.append((type(headers), headers is response.headers, headers.raw is response.raw_headers))
        headers["x-added"] = "yes"
        headers.add_vary_header("Origin")
        del headers["x-drop"]
        with pytest.raises(ValueError):
            headers["x-bad"] = "a\r\nb"
        return response

    app = Starlette(routes=[Route("/", endpoint)], middleware=[Middleware(BaseHTTPMiddleware, dispatch=dispatch)])
    sent = await _serve(app)
    assert seen == [(MutableHeaders, True, True)]
    start = next(m for m in sent if m["type"] == "http.response.start")
    names = [k for k, _ in start["headers"]]
    assert (b"x-added", b"yes") in start["headers"] and (b"vary", b"Origin") in start["headers"]
    assert b"x-drop" not in names and b"x-bad" not in names


@pytest.mark.anyio
async def test_call_next_response_headers_with_tuple_headers_from_the_app() -> None:
    async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": ((b"content-type", b"text/plain"),)})
        await send({"type": "http.response.body", "body": b"ok"})

    async def dispatch(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["x-added"] = "yes"
        return response

    sent = await _serve(BaseHTTPMiddleware(raw_app, dispatch=dispatch))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert list(start["headers"]) == [(b"content-type", b"text/plain"), (b"x-added", b"yes")]


# --------------------------------------------------------------------------- append's field cache


def test_append_repeats_give_the_same_fields_as_starlette() -> None:
    # `append` reuses the field it built for the same two str objects
    # (rust/field_cache.rs). Many distinct pairs, more than the cache holds,
    # each appended twice, interleaved so that entries are evicted and rebuilt;
    # plus values the cache never keeps (long ones) and str subclasses.
    class Text(str):
        pass

    names = [f"X-Name-{i}" for i in range(150)] + ["Set-Cookie", Text("X-Sub")]
    values = [f"v{i}" for i in range(150)] + ["c" * 300, Text("sub")]
    ours, theirs = MutableHeaders(raw=[]), sd.MutableHeaders(raw=[])
    for _ in range(2):
        for name, value in zip(names, values):
            ours.append(name, value)
            theirs.append(name, value)
        for name, value in zip(reversed(names), values):
            ours.append(name, value)
            theirs.append(name, value)
    assert ours.raw == theirs.raw


def test_append_refuses_a_bad_field_every_time() -> None:
    # Only validated fields are cached: the same bad pair is refused again.
    headers = MutableHeaders(raw=[])
    for _ in range(3):
        with pytest.raises(ValueError, match="invalid value"):
            headers.append("X-A", "a\r\nb")
        with pytest.raises(ValueError, match="invalid header name"):
            headers.append("X A", "b")
    headers.append("X-A", "ok")
    assert headers.raw == [(b"x-a", b"ok")]


def test_append_of_a_known_name_still_checks_and_encodes_each_new_value() -> None:
    # A name appended before has its bytes reused (rust/field_cache.rs); every
    # new value must still be encoded and checked as on a first append.
    name = "X-Known"
    ours, theirs = MutableHeaders(raw=[]), sd.MutableHeaders(raw=[])
    for value in ["first", "caf\xe9", "second"]:
        ours.append(name, value)
        theirs.append(name, value)
    assert ours.raw == theirs.raw

    def refusal(name_object: str, value: str) -> tuple[type[BaseException], str]:
        with pytest.raises((ValueError, UnicodeEncodeError)) as info:
            MutableHeaders(raw=[]).append(name_object, value)
        return info.type, str(info.value)

    fresh_name = "".join(["X-", "Known"])  # equal, but a str object never seen before
    assert fresh_name is not name
    for bad in ["a\r\nb", "nul\x00", "euro \u20ac"]:
        assert refusal(name, bad) == refusal(fresh_name, bad)
    with pytest.raises(UnicodeEncodeError):
        theirs.append(name, "euro \u20ac")
    with pytest.raises(UnicodeEncodeError):
        ours.append(name, "euro \u20ac")
    assert ours.raw == theirs.raw
