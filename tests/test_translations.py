"""The Polish catalogues are complete and compiled (users see Polish first).

Every app that has a ``locale/pl/LC_MESSAGES/django.po`` (hub, signaling, …)
is checked, and what a meeting says to people (the refusal reasons of the
meeting socket and the texts of the browser client) is really in Polish.
"""

import re
import subprocess
from pathlib import Path

import pytest
from django.utils import translation

ROOT = Path(__file__).resolve().parent.parent
CATALOGUES = sorted(ROOT.glob("*/locale/pl/LC_MESSAGES/django.po"))
assert CATALOGUES, "no */locale/pl/LC_MESSAGES/django.po found"

# Words that are the same in Polish (the catalogue still has them, translated).
SAME_IN_POLISH = {"moderator"}
PLACEHOLDER = re.compile(r"%\(\w+\)[sdr]")

by_app = pytest.mark.parametrize("po", CATALOGUES, ids=lambda po: po.parts[-5])


def _unquote(lines: str) -> str:
    return "".join(re.findall(r'^"(.*)"$', lines, re.M)).replace('\\"', '"')


def _entries(po: Path) -> dict[str, list[str]]:
    """msgid -> its msgstr (or every msgstr[n] of a plural), obsolete ones left out."""
    entries = {}
    for block in po.read_text(encoding="utf-8").split("\n\n"):
        lines = "\n".join(line for line in block.splitlines() if not line.startswith("#"))
        msgid = re.search(r'^msgid (".*"\n(?:".*"\n)*)', lines + "\n", re.M)
        if msgid is None:
            continue
        strs = re.findall(r'^msgstr(?:\[\d+\])? (".*"\n(?:".*"\n)*)', lines + "\n", re.M)
        entries[_unquote(msgid.group(1))] = [_unquote(s) for s in strs]
    return entries


@by_app
def test_every_message_has_a_polish_translation_and_none_is_fuzzy(po):
    assert "#, fuzzy" not in po.read_text(encoding="utf-8")
    entries = _entries(po)
    entries.pop("")  # the header
    assert entries
    untranslated = [msgid for msgid, strs in entries.items() if not strs or "" in strs]
    assert untranslated == []


@by_app
def test_the_compiled_catalogue_matches_the_source(po, tmp_path):
    compiled = tmp_path / "django.mo"
    subprocess.run(["msgfmt", "--check", "-o", str(compiled), str(po)], check=True)
    assert compiled.read_bytes() == po.with_suffix(".mo").read_bytes()


def _meeting_texts():
    from signaling.consumers import REASONS
    from signaling.views import CLIENT_TEXT

    return [(f"REASONS[{k}]", v) for k, v in REASONS.items()] + [
        (f"CLIENT_TEXT[{k}]", v) for k, v in CLIENT_TEXT.items()
    ]


def test_what_a_meeting_says_is_translated_into_polish():
    catalogue = _entries(ROOT / "signaling/locale/pl/LC_MESSAGES/django.po")
    wrong = []
    for name, text in _meeting_texts():
        with translation.override(None):  # no catalogue: the msgid itself
            english = str(text)
        with translation.override("pl"):
            polish = str(text)
        if english in SAME_IN_POLISH:
            translated = catalogue.get(english) == [english]
        else:
            translated = polish != english
        if not translated:
            wrong.append(f"{name}: {english!r} is not translated")
        elif sorted(PLACEHOLDER.findall(polish)) != sorted(PLACEHOLDER.findall(english)):
            wrong.append(f"{name}: {polish!r} lost or changed a placeholder of {english!r}")
    assert wrong == []
