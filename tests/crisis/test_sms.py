"""SMS length in GSM-7 and UCS-2 with Polish text, and transliteration."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.sms import GSM7_BASIC, GSM7_EXTENSION, is_gsm7, sms_length, to_gsm7

FLOOD = "Ostrzeżenie: wysoki stan wody na Mrowli. Nie zbliżaj się do wałów."


def test_the_basic_alphabet_has_127_writable_characters_and_10_extended():
    assert len(GSM7_BASIC) == 127  # 128 code points, one of them the escape
    assert len(GSM7_EXTENSION) == 10
    assert not GSM7_BASIC & GSM7_EXTENSION


@pytest.mark.parametrize("letter", list("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ"))
def test_every_polish_letter_forces_ucs2(letter):
    assert sms_length(f"Uwaga {letter}").encoding == "UCS-2"


@pytest.mark.parametrize(
    "length, encoding, segments",
    [
        (160, "GSM-7", 1),
        (161, "GSM-7", 2),
        (306, "GSM-7", 2),
        (307, "GSM-7", 3),
    ],
)
def test_gsm7_boundaries(length, encoding, segments):
    result = sms_length("a" * length)
    assert (result.encoding, result.segments) == (encoding, segments)


@pytest.mark.parametrize(
    "length, segments", [(70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_ucs2_boundaries(length, segments):
    result = sms_length("ż" * length)
    assert result.encoding == "UCS-2"
    assert result.segments == segments
    assert result.per_segment == (70 if segments == 1 else 67)


def test_extension_characters_count_twice_and_are_not_split():
    assert sms_length("€" * 80).units == 160
    assert sms_length("€" * 80).segments == 1
    assert sms_length("€" * 81).segments == 2
    # 152 plain characters, then an escape pair that does not fit the first part.
    result = sms_length("a" * 152 + "€" + "a" * 10)
    assert result.units == 164 and result.segments == 2
    assert result.left == 153 - (2 + 10)


def test_characters_outside_the_bmp_take_two_units_and_stay_whole():
    result = sms_length("🌊" * 35)
    assert (result.encoding, result.units, result.segments) == ("UCS-2", 70, 1)
    assert sms_length("🌊" * 36).segments == 2


def test_a_polish_flood_warning_costs_two_parts_and_one_after_transliteration():
    text = FLOOD + " Ewakuacja: Szkoła Podstawowa nr 1."
    polish = sms_length(text)
    plain = sms_length(to_gsm7(text))
    assert polish.encoding == "UCS-2" and polish.segments == 2
    assert plain.encoding == "GSM-7" and plain.segments == 1


def test_transliteration_writes_polish_plainly():
    assert to_gsm7("Zażółć gęślą jaźń ŁÓDŹ") == "Zazolc gesla jazn LODZ"
    assert to_gsm7("„Uwaga” – woda… 5°C") == '"Uwaga" - woda... 5 st.C'
    assert to_gsm7("Café è ü") == "Café è ü"  # already GSM-7
    assert to_gsm7("漢") == "?"


@given(st.text(max_size=400))
def test_transliterated_text_is_always_gsm7(text):
    assert is_gsm7(to_gsm7(text))


@given(st.text(max_size=600))
def test_parts_never_exceed_what_one_part_holds(text):
    result = sms_length(text)
    assert result.segments >= 1
    assert 0 <= result.left <= result.per_segment
    if result.segments > 1:
        assert result.units > (160 if result.encoding == "GSM-7" else 70)
