"""Norwegian national identity numbers (fødselsnummer, D-nummer) and the subject key."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import random
from datetime import date
from typing import Final

_WEIGHTS_1: Final = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_WEIGHTS_2: Final = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
_DIGITS: Final = frozenset("0123456789")

# Problem texts name the rule that failed and never echo the number: they end up in HTTP
# responses and logs.
MUST_BE_STRING: Final = "must be a string of 11 digits"
ONLY_DIGITS: Final = "must contain only digits"
ELEVEN_DIGITS: Final = "must be 11 digits"
H_NUMBER: Final = "H-numbers are not accepted"
SYNTHETIC: Final = "synthetic test numbers are not accepted"
CHECK_DIGIT: Final = "check digit does not match"
NOT_A_DATE: Final = "not a real calendar date"
CENTURY: Final = "individual number does not fit the birth year"


def _check_digit(digits: str, weights: tuple[int, ...]) -> int | None:
    remainder = sum(int(d) * w for d, w in zip(digits, weights, strict=True)) % 11
    control = (11 - remainder) % 11
    # A remainder that asks for 10 has no single digit, so no number is issued with it.
    return None if control == 10 else control


def check_digits(first_nine: str) -> str | None:
    """The two check digits for the first nine digits, or None if the first nine have none."""
    k1 = _check_digit(first_nine, _WEIGHTS_1)
    if k1 is None:
        return None
    k2 = _check_digit(first_nine + str(k1), _WEIGHTS_2)
    return None if k2 is None else f"{k1}{k2}"


def century_of(individual: int, year_in_century: int) -> int | None:
    """The century (1800, 1900, 2000) the individual number places a two-digit year in."""
    if 0 <= individual <= 499:
        return 1900
    if 500 <= individual <= 749 and year_in_century >= 54:
        return 1800
    if 500 <= individual <= 999 and year_in_century <= 39:
        return 2000
    if 900 <= individual <= 999 and year_in_century >= 40:
        return 1900
    return None


def validate_nin(nin: object, *, allow_synthetic: bool = False) -> str | None:
    """None if `nin` is a valid fødselsnummer or D-nummer, else a short problem text.

    Skatteetaten's synthetic test numbers (month + 80) pass only with `allow_synthetic`;
    H-numbers (month + 40, also NAV's synthetic numbers) never do.
    """
    if not isinstance(nin, str):
        return MUST_BE_STRING
    if not set(nin) <= _DIGITS:
        return ONLY_DIGITS
    if len(nin) != 11:
        return ELEVEN_DIGITS
    day, month = int(nin[0:2]), int(nin[2:4])
    if 41 <= month <= 52:
        return H_NUMBER
    if 81 <= month <= 92:
        if not allow_synthetic:
            return SYNTHETIC
        month -= 80
    if check_digits(nin[:9]) != nin[9:]:
        return CHECK_DIGIT
    if day > 40:
        day -= 40  # D-nummer
    century = century_of(int(nin[6:9]), int(nin[4:6]))
    if century is None:
        return CENTURY
    year = century + int(nin[4:6])
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
        return NOT_A_DATE
    return None


def is_d_number(nin: str) -> bool:
    """Whether a valid `nin` is a D-nummer (its day is 40 more than the birth day)."""
    return nin[:1].isdigit() and int(nin[0:2]) > 40


def subject_key(nin: str, secret: str | bytes) -> str:
    """The person's pseudonym inside the bus: HMAC-SHA256 of the nin under `secret`, hex."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, nin.encode(), hashlib.sha256).hexdigest()


def make_nin(
    birth: date, individual: int, *, d_number: bool = False, synthetic: bool = False
) -> str:
    """A valid number for `birth` and `individual` (for tests and demo traffic).

    Raises ValueError if the individual number cannot belong to that birth year, or if
    these first nine digits have no valid check digits (about one in five do not).
    """
    yy = birth.year % 100
    if not 0 <= individual <= 999 or century_of(individual, yy) != birth.year - yy:
        raise ValueError("individual number does not fit the birth year")
    day = birth.day + (40 if d_number else 0)
    month = birth.month + (80 if synthetic else 0)
    first_nine = f"{day:02d}{month:02d}{yy:02d}{individual:03d}"
    checks = check_digits(first_nine)
    if checks is None:
        raise ValueError("no valid check digits for this individual number")
    return first_nine + checks


def _individual_range(year: int) -> tuple[int, int]:
    if 1900 <= year <= 1999:
        return (0, 499)
    if 2000 <= year <= 2039:
        return (500, 999)
    if 1854 <= year <= 1899:
        return (500, 749)
    raise ValueError("birth years from 1854 to 2039 only")


def random_nin(
    rng: random.Random,
    *,
    d_number: bool = False,
    synthetic: bool = False,
    born_from: date = date(1940, 1, 1),
    born_to: date = date(2008, 12, 31),
) -> str:
    """A random valid number with a birth date in [born_from, born_to]."""
    span = (born_to - born_from).days
    while True:
        birth = date.fromordinal(born_from.toordinal() + rng.randint(0, span))
        low, high = _individual_range(birth.year)
        try:
            return make_nin(birth, rng.randint(low, high), d_number=d_number, synthetic=synthetic)
        except ValueError:
            continue
