"""Tests for carebus.domain.identity: fødselsnummer and D-nummer, subject keys, generators."""

from __future__ import annotations

import random
from datetime import date

import pytest

from carebus.domain import identity
from carebus.domain.identity import (
    check_digits,
    make_nin,
    random_nin,
    subject_key,
    validate_nin,
)

# Check digits worked by hand for the first one (sum 163 → k1 2; sum 139 → k2 4).
VALID = [
    pytest.param("14038512324", id="fnr-1985-individual-123"),
    pytest.param("02010551385", id="fnr-2005-individual-513"),
    pytest.param("01067060063", id="fnr-1870-individual-600"),
    pytest.param("31075595150", id="fnr-1955-individual-951"),
    pytest.param("29020070003", id="fnr-2000-02-29-leap-century"),
    pytest.param("29028440004", id="fnr-1984-02-29-leap"),
    pytest.param("31123999935", id="fnr-2039-last-year"),
    pytest.param("54038512318", id="dnr-1985"),
    pytest.param("42010551298", id="dnr-2005"),
    pytest.param("71075595063", id="dnr-day-31"),
]


def _with_check_digits(first_nine: str) -> str:
    checks = check_digits(first_nine)
    assert checks is not None, f"test setup: {first_nine} has no check digits"
    return first_nine + checks


@pytest.mark.parametrize("nin", VALID)
def test_valid_numbers_pass(nin: str) -> None:
    """Fødselsnumre and D-numre of three centuries are valid."""
    assert validate_nin(nin) is None


@pytest.mark.parametrize(
    ("nin", "problem"),
    [
        pytest.param("14038512334", identity.CHECK_DIGIT, id="first-check-digit"),
        pytest.param("14038512325", identity.CHECK_DIGIT, id="second-check-digit"),
        pytest.param("14038512342", identity.CHECK_DIGIT, id="check-digits-swapped"),
        pytest.param(_with_check_digits("310285123"), identity.NOT_A_DATE, id="31-february"),
        pytest.param(_with_check_digits("011385123"), identity.NOT_A_DATE, id="month-13"),
        pytest.param(_with_check_digits("010085123"), identity.NOT_A_DATE, id="month-00"),
        pytest.param(_with_check_digits("000185113"), identity.NOT_A_DATE, id="day-00"),
        pytest.param(_with_check_digits("320185113"), identity.NOT_A_DATE, id="day-32"),
        pytest.param(_with_check_digits("720185113"), identity.NOT_A_DATE, id="d-number-day-32"),
        pytest.param(_with_check_digits("290285123"), identity.NOT_A_DATE, id="29-feb-1985"),
        pytest.param(_with_check_digits("290200123"), identity.NOT_A_DATE, id="29-feb-1900"),
        pytest.param(_with_check_digits("144385123"), identity.H_NUMBER, id="h-number"),
        pytest.param(_with_check_digits("148385124"), identity.SYNTHETIC, id="synthetic"),
        pytest.param(
            _with_check_digits("140350800"), identity.CENTURY, id="individual-800-in-1950"
        ),
        pytest.param(
            _with_check_digits("140345600"), identity.CENTURY, id="individual-600-in-1945"
        ),
        pytest.param("1403851232", identity.ELEVEN_DIGITS, id="10-digits"),
        pytest.param("140385123245", identity.ELEVEN_DIGITS, id="12-digits"),
        pytest.param("", identity.ELEVEN_DIGITS, id="empty"),
        pytest.param("1403851232X", identity.ONLY_DIGITS, id="letter"),
        pytest.param("140385 12324", identity.ONLY_DIGITS, id="space"),
        pytest.param("140385-12324", identity.ONLY_DIGITS, id="dash"),
        pytest.param("1403851232\u0664", identity.ONLY_DIGITS, id="arabic-indic-digit"),
        pytest.param(14038512324, identity.MUST_BE_STRING, id="integer"),
        pytest.param(None, identity.MUST_BE_STRING, id="none"),
    ],
)
def test_invalid_numbers_are_rejected_with_the_rule_that_failed(nin: object, problem: str) -> None:
    """Each invalid number gets the problem of the rule it breaks, without the number in it."""
    found = validate_nin(nin)
    assert found == problem
    if isinstance(nin, str) and nin:
        assert nin not in found
        assert nin[:6] not in found


def test_synthetic_numbers_pass_only_when_allowed() -> None:
    """Skatteetaten's synthetic numbers (month + 80) are valid only with allow_synthetic."""
    synthetic = make_nin(date(1985, 3, 14), 124, synthetic=True)
    assert synthetic[2:4] == "83"
    assert validate_nin(synthetic) == identity.SYNTHETIC
    assert validate_nin(synthetic, allow_synthetic=True) is None


def test_synthetic_flag_does_not_admit_h_numbers() -> None:
    """H-numbers stay rejected when synthetic numbers are allowed."""
    h_number = _with_check_digits("144385123")
    assert validate_nin(h_number, allow_synthetic=True) == identity.H_NUMBER


def test_remainder_giving_ten_has_no_check_digit() -> None:
    """First nine digits whose check digit would be 10 have no valid number."""
    assert check_digits("140385104") is None
    assert all(validate_nin("140385104" + f"{k:02d}") is not None for k in range(100))


def test_make_nin_builds_the_number_from_its_parts() -> None:
    """make_nin lays out day, month, year, individual number and check digits."""
    assert make_nin(date(1985, 3, 14), 123) == "14038512324"
    assert make_nin(date(1985, 3, 14), 123, d_number=True) == "54038512318"


@pytest.mark.parametrize(
    ("birth", "individual"),
    [
        (date(1985, 3, 14), 600),  # 500-749 means 1854-1899 or 2000-2039
        (date(2005, 1, 2), 123),  # 000-499 means 1900-1999
        (date(1870, 6, 1), 800),  # 750-999 never means the 1800s
        (date(1985, 3, 14), 1000),
    ],
)
def test_make_nin_refuses_an_individual_number_of_another_century(
    birth: date, individual: int
) -> None:
    """make_nin raises when the individual number places the year in another century."""
    with pytest.raises(ValueError, match="birth year"):
        make_nin(birth, individual)


def test_make_nin_refuses_individual_numbers_without_check_digits() -> None:
    """make_nin raises for the individual numbers whose check digit would be 10."""
    with pytest.raises(ValueError, match="check digits"):
        make_nin(date(1985, 3, 14), 104)


def test_random_numbers_are_valid_and_reproducible() -> None:
    """random_nin gives valid numbers, the same ones for the same seed."""
    first = [random_nin(random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    rng = random.Random(42)
    numbers = [random_nin(rng) for _ in range(500)]
    assert all(validate_nin(nin) is None for nin in numbers)
    assert len(set(numbers)) > 490
    d_numbers = [random_nin(rng, d_number=True) for _ in range(100)]
    assert all(validate_nin(nin) is None and int(nin[0]) >= 4 for nin in d_numbers)
    synthetic = [random_nin(rng, synthetic=True) for _ in range(100)]
    assert all(validate_nin(nin, allow_synthetic=True) is None for nin in synthetic)


def test_random_numbers_cover_the_date_range() -> None:
    """random_nin draws birth dates across the range, including the 2000s."""
    rng = random.Random(1)
    numbers = [
        random_nin(rng, born_from=date(1870, 1, 1), born_to=date(2030, 12, 31)) for _ in range(300)
    ]
    assert all(validate_nin(nin) is None for nin in numbers)
    individuals = [int(nin[6:9]) for nin in numbers]
    assert min(individuals) < 500 < max(individuals)


def test_subject_key_is_deterministic_and_depends_on_the_secret() -> None:
    """The same nin and secret give the same key; another secret or nin gives another key."""
    key = subject_key("14038512324", "secret-a")
    assert key == subject_key("14038512324", b"secret-a")
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert key != subject_key("14038512324", "secret-b")
    assert key != subject_key("54038512318", "secret-a")
    assert "14038512324" not in key


def test_subject_key_is_hmac_sha256() -> None:
    """The subject key is the standard HMAC-SHA256, so other languages can compute it."""
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"14038512324", hashlib.sha256).hexdigest()
    assert subject_key("14038512324", "k") == expected
