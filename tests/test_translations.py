"""The Polish catalogue is complete and compiled (users see Polish first)."""

import subprocess
from pathlib import Path

PO = Path(__file__).resolve().parent.parent / "hub/locale/pl/LC_MESSAGES/django.po"


def test_every_message_has_a_polish_translation_and_none_is_fuzzy():
    text = PO.read_text(encoding="utf-8")
    assert "#, fuzzy" not in text
    entries = text.split("\n\n")[1:]  # the first is the header
    untranslated = [
        e for e in entries if e.rstrip().endswith('msgstr ""') and "msgid_plural" not in e
    ]
    assert untranslated == []


def test_the_compiled_catalogue_matches_the_source(tmp_path):
    compiled = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "--check", "-o", str(compiled), str(PO)], check=True)
    assert compiled.read_bytes() == PO.with_suffix(".mo").read_bytes()
