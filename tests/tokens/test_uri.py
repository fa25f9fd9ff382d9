"""RFC 7512 URIs and pkcs11-helper legacy ids: parsing, formatting, matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idm.identity.tokens.uri import (
    OBJECT_TYPES,
    Pkcs11Uri,
    TokenIdentity,
    UriError,
    format_legacy_id,
    parse_legacy_id,
    parse_token_reference,
)

# RFC 7512 section 3 examples (a selection), with what they must decode to.
RFC_EXAMPLES = [
    ("pkcs11:", Pkcs11Uri()),
    ("pkcs11:object=my-pubkey;type=public", Pkcs11Uri(object="my-pubkey", type="public")),
    (
        "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
        Pkcs11Uri(object="my-key", type="private", pin_source="file:/etc/token"),
    ),
    (
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;"
        "model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;"
        "serial=?pin-source=file:/etc/token_pin",
        Pkcs11Uri(
            token="The Software PKCS#11 Softtoken",
            manufacturer="Snake Oil, Inc.",
            model="1.0",
            object="my-certificate",
            type="cert",
            id=bytes.fromhex("69953e5cf4bdec91"),
            serial="",
            pin_source="file:/etc/token_pin",
        ),
    ),
    (
        "pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
        Pkcs11Uri(object="my-sign-key", type="private", module_name="mypkcs11"),
    ),
    (
        "pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
        Pkcs11Uri(object="my-sign-key", type="private", module_path="/mnt/libmypkcs11.so.1"),
    ),
    (
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc."
        "?pin-value=the-pin",
        Pkcs11Uri(
            token="Software PKCS#11 softtoken", manufacturer="Snake Oil, Inc.", pin_value="the-pin"
        ),
    ),
    ("pkcs11:slot-description=Sun%20Metaslot", Pkcs11Uri(slot_description="Sun Metaslot")),
    (
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token;"
        "library-version=1.23",
        Pkcs11Uri(
            library_manufacturer="Snake Oil, Inc.",
            library_description="Soft Token",
            library_version="1.23",
        ),
    ),
    (
        "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;"
        "id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
        Pkcs11Uri(
            token="My token% created by Joe",
            library_version="3",
            id=bytes.fromhex("010203baddcafe040506"),
        ),
    ),
    (
        "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        Pkcs11Uri(token="A name with a substring %;", object="my-certificate", type="cert"),
    ),
    (
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;"
        "type=cert",
        Pkcs11Uri(
            token="Name with a small A with acute: \u00e1", object="my-certificate", type="cert"
        ),
    ),
    (
        "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source="
        "file:/etc/token_pin&vendor-bbb=value-b",
        None,
    ),
    ("pkcs11:slot-id=5", Pkcs11Uri(slot_id=5)),
]


@pytest.mark.parametrize(("text", "expected"), RFC_EXAMPLES)
def test_rfc_examples(text: str, expected: Pkcs11Uri | None) -> None:
    if expected is None:
        # RFC example with non-"x-" vendor attributes: we refuse unknown standard names.
        with pytest.raises(UriError, match="unknown path attribute 'vendor-aaa'"):
            Pkcs11Uri.parse(text)
        return
    uri = Pkcs11Uri.parse(text)
    assert uri == expected
    assert Pkcs11Uri.parse(str(uri)) == uri


def test_formatting_is_canonical() -> None:
    uri = Pkcs11Uri.parse(
        "pkcs11:id=%01%ab;token=a%20b&c;type=cert?pin-value=x%26y&module-path=/a/b"
    )
    # fixed order, upper-case hex, id fully escaped, "&" escaped only in the query
    assert str(uri) == "pkcs11:token=a%20b&c;type=cert;id=%01%AB?pin-value=x%26y&module-path=/a/b"


def test_repr_and_redacted_hide_pin_value() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=t?pin-value=secret-pin")
    assert "secret-pin" not in repr(uri)
    assert "secret-pin" not in str(uri.redacted())
    assert uri.pin_value == "secret-pin"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://example", "not a pkcs11: URI"),
        ("pkcs11:token", "without '='"),
        ("pkcs11:token=a;;model=b", "empty attribute"),
        ("pkcs11:token=a;token=b", "given twice"),
        ("pkcs11:id=%4", "bad percent-escape"),
        ("pkcs11:id=%GG", "bad percent-escape"),
        ("pkcs11:token=%FF", "not valid UTF-8"),
        ("pkcs11:type=secret", "type must be one of"),
        ("pkcs11:slot-id=x1", "slot-id must be a decimal"),
        ("pkcs11:library-version=1.x", "library-version"),
        ("pkcs11:?pin-value=1&pin-source=/f", "must not both"),
        ("pkcs11:?bogus=1", "unknown query attribute"),
        ("pkcs11:=x", "without a name"),
    ],
)
def test_malformed_uris_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(UriError, match=message):
        Pkcs11Uri.parse(text)


def test_vendor_attributes_are_kept() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=t;x-slot=7?x-flag=on%26off")
    assert uri.vendor_path == (("x-slot", "7"),)
    assert uri.vendor_query == (("x-flag", "on&off"),)
    assert str(uri) == "pkcs11:token=t;x-slot=7?x-flag=on%26off"


def test_matching_ignores_padding_and_absent_attributes() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=card;serial=0042;library-version=2")
    assert uri.matches_token(
        label="card   ", manufacturer="X", model="Y", serial="0042", library_version="2.6"
    )
    assert not uri.matches_token(
        label="card", manufacturer="X", model="Y", serial="0043", library_version="2.6"
    )
    assert not uri.matches_token(
        label="card", manufacturer="X", model="Y", serial="0042", library_version="3.0"
    )
    assert Pkcs11Uri.parse("pkcs11:slot-id=3").matches_token(
        label="a", manufacturer="b", model="c", serial="d", slot_id=3
    )


def test_object_matching_and_derived_uris() -> None:
    uri = Pkcs11Uri.parse("pkcs11:token=t;serial=1;object=k;type=private;id=%01?pin-value=1")
    assert uri.names_object
    assert uri.matches_object(label="k", id=b"\x01", type="private")
    assert not uri.matches_object(label="k", id=b"\x02", type="private")
    assert not uri.matches_object(label="k", id=b"\x01", type="cert")
    assert str(uri.token_uri()) == "pkcs11:token=t;serial=1"
    assert (
        str(uri.with_object(id=b"\x02", type="cert")) == "pkcs11:token=t;serial=1;type=cert;id=%02"
    )
    ident = TokenIdentity("SoftHSM project", "SoftHSM v2", "1", "t")
    assert ident.matches(uri.token_uri())
    assert ident.uri().token == "t"


def test_legacy_pkcs11_helper_ids() -> None:
    uri = parse_legacy_id(r"SoftHSM\x20project/SoftHSM\x20v2/ade9426e1c530653/my\x2fcard/01AB")
    assert uri == Pkcs11Uri(
        token="my/card",
        manufacturer="SoftHSM project",
        model="SoftHSM v2",
        serial="ade9426e1c530653",
        id=b"\x01\xab",
    )
    token_only = parse_legacy_id("Vendor/Model/123/label")
    assert token_only.id is None and token_only.token == "label"
    assert parse_token_reference(format_legacy_id(uri)) == uri
    assert parse_token_reference("  pkcs11:token=x ") == Pkcs11Uri(token="x")
    with pytest.raises(UriError, match="HEXID|hexadecimal"):
        parse_legacy_id("a/b/c/d/xyz")
    with pytest.raises(UriError, match=r"\\xHH"):
        parse_legacy_id(r"a/b\q/c/d")
    with pytest.raises(UriError, match="expected a pkcs11: URI"):
        parse_token_reference("just-a-label")


# -- property: every URI value survives format -> parse --------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_vendor_name = st.from_regex(r"x-[a-z0-9_-]{1,8}", fullmatch=True)


@st.composite
def uris(draw: st.DrawFn) -> Pkcs11Uri:
    opt = lambda s: draw(st.none() | s)  # noqa: E731
    pin_value = opt(_text)
    pin_source = None if pin_value is not None else opt(_text)
    return Pkcs11Uri(
        token=opt(_text),
        manufacturer=opt(_text),
        serial=opt(_text),
        model=opt(_text),
        library_manufacturer=opt(_text),
        library_description=opt(_text),
        library_version=opt(st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3})?", fullmatch=True)),
        slot_description=opt(_text),
        slot_manufacturer=opt(_text),
        slot_id=opt(st.integers(min_value=0, max_value=2**64)),
        object=opt(_text),
        type=opt(st.sampled_from(OBJECT_TYPES)),
        id=opt(st.binary(max_size=32)),
        pin_source=pin_source,
        pin_value=pin_value,
        module_name=opt(_text),
        module_path=opt(_text),
        vendor_path=tuple(draw(st.lists(st.tuples(_vendor_name, _text), max_size=2))),
        vendor_query=tuple(draw(st.lists(st.tuples(_vendor_name, _text), max_size=2))),
    )


@given(uris())
def test_format_parse_round_trip(uri: Pkcs11Uri) -> None:
    text = str(uri)
    assert Pkcs11Uri.parse(text) == uri
    assert str(Pkcs11Uri.parse(text)) == text
    # only RFC 7512 characters appear unescaped
    body = text[len("pkcs11:") :]
    assert all(c.isascii() and c.isprintable() and c not in ' "#<>\\^`{}' for c in body)


@given(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.none() | st.binary(min_size=1, max_size=20),
)
def test_legacy_id_round_trip(
    manufacturer: str, model: str, serial: str, label: str, key_id: bytes | None
) -> None:
    uri = Pkcs11Uri(token=label, manufacturer=manufacturer, model=model, serial=serial, id=key_id)
    assert parse_legacy_id(format_legacy_id(uri)) == uri
