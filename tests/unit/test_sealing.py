"""Sealed values and data keys (carebus.wire.sealing): what opens, what never does."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from carebus.domain.events import PAYLOAD_FIELDS
from carebus.runtime.config import LOCAL_PERSON_KEY_SECRET, MIN_SECRET_CHARS, Settings
from carebus.wire.sealing import (
    ERASED_TEXT,
    PREFIX,
    SEALED_FIELDS,
    DataKey,
    Keyring,
    KeyWrap,
    SealedUnreadableError,
    is_sealed,
    new_data_key,
    open_body,
    open_sealed,
    open_text,
    seal,
    seal_record,
    sealed_version,
)

PERSON = "a" * 64
OTHER = "b" * 64
NIN = "01019012345"
KEY = DataKey(PERSON, 1, new_data_key())
KEYS = Keyring.of([KEY])


def delivery(nin: str, ward: str, justification: str, accountable: str = "x") -> dict[str, object]:
    return {
        "delivery_id": "d-1",
        "event_id": "e-1",
        "subject": {"nin": nin},
        "basis": "emergency",
        "payload": {"reason": "overdose", "ward": ward},
        "emergency": {"justification": justification, "accountable": accountable},
    }


def test_a_sealed_value_is_a_string_that_names_its_key_version_and_hides_the_value() -> None:
    """`sealed:v1:<version>:…`, ASCII, without the clear text, different every time."""
    sealed = seal(KEY, "subject.nin", NIN)

    assert sealed.startswith(f"{PREFIX}1:")
    assert sealed.isascii()
    assert NIN not in sealed
    assert sealed_version(sealed) == 1
    assert is_sealed(sealed)
    assert seal(KEY, "subject.nin", NIN) != sealed


def test_a_sealed_value_opens_under_its_person_key_and_field() -> None:
    """The same key, person and field path give the clear text back (also non-ASCII)."""
    assert open_sealed(KEYS, PERSON, "subject.nin", seal(KEY, "subject.nin", NIN)) == NIN
    ward = "Avdeling Ø, 3. etasje"
    assert open_sealed(KEYS, PERSON, "payload.ward", seal(KEY, "payload.ward", ward)) == ward


@pytest.mark.parametrize(
    ("subject_key", "path"),
    [(OTHER, "subject.nin"), (PERSON, "payload.ward")],
    ids=["moved to another person", "moved to another field"],
)
def test_a_sealed_value_moved_to_another_person_or_field_does_not_open(
    subject_key: str, path: str
) -> None:
    """The associated data binds a value to its person and its field."""
    sealed = seal(KEY, "subject.nin", NIN)
    keys = Keyring.of([KEY, DataKey(OTHER, 1, KEY.key)])  # even under the very same key bytes

    with pytest.raises(SealedUnreadableError) as refused:
        open_sealed(keys, subject_key, path, sealed)
    assert NIN not in str(refused.value)


def test_a_sealed_value_does_not_open_once_its_key_is_erased_or_unknown() -> None:
    """An erased version (None) or a version the reader does not hold opens nothing."""
    sealed = seal(KEY, "subject.nin", NIN)

    for keys in (Keyring.of([DataKey(PERSON, 1, None)]), Keyring({})):
        with pytest.raises(SealedUnreadableError):
            open_sealed(keys, PERSON, "subject.nin", sealed)


def test_an_altered_sealed_value_does_not_open() -> None:
    """A changed character, a changed version or garbage is refused, never a wrong text."""
    sealed = seal(KEY, "subject.nin", NIN)
    altered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    for value in (altered, sealed.replace(":1:", ":2:", 1), PREFIX + "1:!!", PREFIX + "x:abc"):
        with pytest.raises(SealedUnreadableError):
            open_sealed(
                Keyring.of([KEY, DataKey(PERSON, 2, KEY.key)]), PERSON, "subject.nin", value
            )


def test_sealing_under_an_erased_key_is_refused() -> None:
    with pytest.raises(SealedUnreadableError):
        seal(DataKey(PERSON, 1, None), "subject.nin", NIN)


def test_seal_record_seals_the_nin_and_every_free_text_and_leaves_the_rest() -> None:
    """subject.nin, payload.ward, payload.service, emergency.justification and
    emergency.accountable are sealed; other fields and the input record are unchanged."""
    record = {
        "event_id": "e-1",
        "subject": {"nin": NIN},
        "subject_key": PERSON,
        "payload": {"reason": "overdose", "ward": "W3", "service": None},
        "emergency": {"justification": "J", "accountable": "A", "recipients": []},
    }

    sealed = seal_record(record, KEY)

    assert record["subject"] == {"nin": NIN}
    assert sealed["event_id"] == "e-1"
    assert sealed["payload"]["reason"] == "overdose"
    assert sealed["payload"]["service"] is None
    for obj, name in [("subject", "nin"), ("payload", "ward"), ("emergency", "justification")]:
        assert is_sealed(sealed[obj][name]), name
        assert open_sealed(KEYS, PERSON, f"{obj}.{name}", sealed[obj][name]) == record[obj][name]  # type: ignore[index]
    assert open_sealed(KEYS, PERSON, "emergency.accountable", sealed["emergency"]["accountable"])
    assert sealed["emergency"]["recipients"] == []


def test_every_free_text_field_of_the_contract_is_sealed() -> None:
    """A payload field of kind text (a ward, a service, whom to contact at the DPS) is personal
    data in clear unless it is sealed: each is in SEALED_FIELDS."""
    free_text = {
        name
        for fields in PAYLOAD_FIELDS.values()
        for name, spec in fields.items()
        if spec.kind == "text"
    }
    assert free_text == {"ward", "service", "dps_contact"}
    assert {("payload", name) for name in free_text} <= set(SEALED_FIELDS)


def test_the_dps_contact_of_a_discharge_is_sealed_and_opens_for_its_recipient() -> None:
    """The DPS contact (a name of health personnel) travels sealed under the person's key."""
    record = {"subject": {"nin": NIN}, "payload": {"dps_contact": "Kari, 22 00 00 00"}}
    sealed = seal_record(record, KEY)
    assert is_sealed(sealed["payload"]["dps_contact"])
    assert "Kari" not in sealed["payload"]["dps_contact"]
    assert open_body(sealed, PERSON, KEYS)["payload"] == record["payload"]


def test_a_record_without_emergency_or_free_text_seals_only_the_nin() -> None:
    sealed = seal_record(
        {"subject": {"nin": NIN}, "payload": {"reason": "x"}, "emergency": None}, KEY
    )

    assert is_sealed(sealed["subject"]["nin"])
    assert sealed["payload"] == {"reason": "x"}
    assert sealed["emergency"] is None


def test_a_body_opens_to_exactly_what_the_recipient_saw_before_sealing() -> None:
    """For a person not erased, the opened body equals the clear one, key for key in order."""
    clear = delivery(NIN, "W3", "Danger", "Dr. A")
    sealed = delivery(
        seal(KEY, "subject.nin", NIN),
        seal(KEY, "payload.ward", "W3"),
        seal(KEY, "emergency.justification", "Danger"),
        seal(KEY, "emergency.accountable", "Dr. A"),
    )

    opened = open_body(sealed, PERSON, KEYS)

    assert opened == clear
    assert list(opened) == list(clear)


def test_a_body_of_an_erased_person_reads_as_erased() -> None:
    """`subject` null, `erased` true, every sealed free text null; the rest as it was."""
    sealed = delivery(
        seal(KEY, "subject.nin", NIN),
        seal(KEY, "payload.ward", "W3"),
        seal(KEY, "emergency.justification", "Danger"),
    )

    opened = open_body(sealed, PERSON, Keyring.of([DataKey(PERSON, 1, None)]))

    assert opened["subject"] is None
    assert opened["erased"] is True
    assert opened["payload"] == {"reason": "overdose", "ward": None}
    assert opened["emergency"] == {"justification": None, "accountable": "x"}
    assert opened["delivery_id"] == "d-1"


def test_a_body_with_nothing_sealed_is_left_as_it_was() -> None:
    clear = delivery(NIN, "W3", "Danger")
    assert open_body(clear, PERSON, Keyring({})) == clear


def test_sealed_values_inside_a_text_are_opened_or_read_as_erased() -> None:
    """An alert summary quoting an emergency justification shows it in clear, or `(erased)`."""
    text = f"Emergency. Justification: {seal(KEY, 'emergency.justification', 'Danger')}. Done."
    paths = ("emergency.justification", "emergency.accountable")

    assert open_text(text, PERSON, KEYS, paths) == (
        "Emergency. Justification: Danger. Done.",
        False,
    )
    erased = Keyring.of([DataKey(PERSON, 1, None)])
    assert open_text(text, PERSON, erased, paths) == (
        f"Emergency. Justification: {ERASED_TEXT}. Done.",
        True,
    )


def test_a_wrapped_data_key_unwraps_only_for_its_person_and_version_under_its_secret() -> None:
    """The key-encryption key binds a wrapped key to (subject key, version)."""
    wrap = KeyWrap("a-long-random-secret")
    data_key = new_data_key()
    wrapped = wrap.wrap(PERSON, 1, data_key)

    assert len(wrapped) == 61  # the length migration 0019 checks
    assert wrap.unwrap(PERSON, 1, wrapped) == DataKey(PERSON, 1, data_key)
    assert wrap.unwrap(PERSON, 1, None).erased
    for subject_key, version, other in (
        (OTHER, 1, wrap),
        (PERSON, 2, wrap),
        (PERSON, 1, KeyWrap("x")),
    ):
        with pytest.raises(SealedUnreadableError):
            other.unwrap(subject_key, version, wrapped)


def test_production_refuses_the_public_person_key_secret() -> None:
    """Outside development the public local default is refused, naming the setting."""
    public = Settings.model_construct(
        environment="production", person_key_secret=SecretStr(LOCAL_PERSON_KEY_SECRET)
    )

    with pytest.raises(ValueError, match="person_key_secret"):
        KeyWrap.from_settings(public)
    assert KeyWrap.from_settings(public.model_copy(update={"environment": "local"}))
    short = public.model_copy(update={"person_key_secret": SecretStr("changeme")})
    with pytest.raises(ValueError, match="at least 43 characters"):
        KeyWrap.from_settings(short)  # HKDF does not stretch a guessable secret
    own = public.model_copy(update={"person_key_secret": SecretStr("k" * MIN_SECRET_CHARS)})
    assert KeyWrap.from_settings(own)


def test_a_sealed_values_length_does_not_tell_its_text() -> None:
    """Texts of different lengths within one padding bucket seal to the same length, and the
    padding never shows when opened."""
    key = DataKey(PERSON, 1, new_data_key())
    keys = Keyring.of([key])
    short, longer = (
        seal(key, "payload.ward", "Akutt 2"),
        seal(key, "payload.ward", "Rusbehandling A"),
    )
    assert len(short) == len(longer)
    assert open_sealed(keys, PERSON, "payload.ward", longer) == "Rusbehandling A"
    assert len(seal(key, "payload.ward", "x" * 40)) > len(short)  # the next bucket


def test_a_data_key_is_256_random_bits() -> None:
    assert len(new_data_key()) == 32
    assert new_data_key() != new_data_key()
