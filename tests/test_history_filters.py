"""The history filters, table-driven: what must be cut before anything is stored, and what
must be kept (small numbers, scores, times, dates, years)."""
import pytest

from keyboard_app.history import (HAS_CARD, HAS_EMAIL, HAS_IBAN, HAS_NUMBER, REDACTED, STORED,
                                  Filters, filter_message, luhn_valid)

MUST_CUT = [  # (text, the reason a "drop" filter gives)
    ("4111 1111 1111 1111", HAS_CARD),
    ("4111-1111-1111-1111", HAS_CARD),
    ("4111 - 1111 - 1111 - 1111", HAS_CARD),
    ("4111_1111_1111_1111", HAS_CARD),
    ("4111.1111.1111.1111", HAS_CARD),
    ("4111/1111/1111/1111", HAS_CARD),
    ("(4111) (1111) (1111) (1111)", HAS_CARD),
    ("4111111111111111", HAS_CARD),
    ("3782 822463 10005", HAS_CARD),
    ("5500 0000 0000 0004", HAS_CARD),
    ("1234 5678 9012", HAS_NUMBER),  # not Luhn-valid, still a long number
    ("555/123/4567", HAS_NUMBER),
    ("555-123-4567", HAS_NUMBER),
    ("555.123.4567", HAS_NUMBER),
    ("555_123_4567", HAS_NUMBER),
    ("555 - 123 - 4567", HAS_NUMBER),
    ("(555) 123-4567", HAS_NUMBER),
    ("+1 (555) 123-4567", HAS_NUMBER),
    ("+44 20 7946 0958", HAS_NUMBER),
    ("+33 6 12 34 56 78", HAS_NUMBER),
    ("06 12 34 56 78", HAS_NUMBER),
    ("0612345678", HAS_NUMBER),
    ("123-45-6789", HAS_NUMBER),
    ("12345678", HAS_NUMBER),
    ("06/12/1234 5678", HAS_NUMBER),  # starts like a date, goes on as a number
    ("555 12/10/2024", HAS_NUMBER),
    ("DE89 3704 0044 0532 0130 00", HAS_IBAN),
    ("GB82WEST12345698765432", HAS_IBAN),
    ("GB82 WEST 1234 5698 7654 32", HAS_IBAN),
    ("fr14 2004 1010 0505 0001 3m02 606", HAS_IBAN),
    ("jane.doe@example.org", HAS_EMAIL),
    ("x_y+tag@mail.co.uk", HAS_EMAIL),
]

MUST_KEEP = [
    "see you at 5", "2 - 1 win", "10/12", "meet at 10:30", "10:30 - 11:45", "at 7.30pm",
    "in 2024", "back in 1999", "2019-2024", "1999 - 2004", "on 12/10/2024", "2024-03-15",
    "15.03.2024", "3/4/21", "room 101", "i owe you 25 dollars and 123456 points",
    "1,000,000 views", "pi is 3.14159", "A380 pilots", "mp3 player", "top 10 of 2023",
    "score 21-19", "version 2.0.1", "chapter 4, page 215", "covid-19", "1-2-3 go", "$49.99",
    "50% off", "call me at 5 or 6", "the 90s", "ab12 cdef ghij klmn",
]


def test_the_tables_are_large_enough():
    assert len(MUST_CUT) >= 30 and len(MUST_KEEP) >= 30


@pytest.mark.parametrize("text, reason", MUST_CUT)
def test_sensitive_formats_are_cut(text, reason):
    assert filter_message(f"mine is {text} ok") == ("mine is ok", REDACTED)
    assert filter_message(text, Filters(mode="drop")) == (None, reason)


@pytest.mark.parametrize("text", MUST_KEEP)
def test_ordinary_numbers_are_kept(text):
    assert filter_message(f"so {text} ok") == (f"so {text} ok", STORED)


def test_cards_are_cut_whatever_the_digit_threshold():
    loose = Filters(min_digits=20)
    assert filter_message("pay 4111-1111-1111-1111 now", loose) == ("pay now", REDACTED)
    assert filter_message("id 4111-1111-1111-1112 now", loose)[1] == STORED  # not Luhn-valid
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_switched_off_filters_keep_everything():
    off = Filters(digits=False, emails=False)
    for text, _ in MUST_CUT:
        assert filter_message(text, off) == (text, STORED)
