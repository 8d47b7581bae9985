"""Streams that WHIP publishers send to and WHEP players watch.

A stream's keys are shown once when made and stored only as SHA-256 digests:
whoever holds the publish key may publish (an encoder, OBS, the council
room's PC); the viewer key, if set, is needed to watch (else anyone may).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

SLUG = r"[a-z0-9][a-z0-9-]{0,62}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return secrets.token_urlsafe(24)


class Stream(models.Model):
    slug = models.CharField(
        _("address"),
        max_length=63,
        unique=True,
        validators=[
            RegexValidator(f"^{SLUG}$"),
            # meetings' rooms in the forwarding unit are "meet-<code>"
            RegexValidator(r"^meet-", inverse_match=True, message=_("Reserved for meetings.")),
        ],
        help_text=_("Lower-case letters, digits and hyphens: /whip/<address>."),
    )
    title = models.CharField(_("title"), max_length=200)
    publish_key_digest = models.CharField(max_length=64)
    viewer_key_digest = models.CharField(max_length=64, blank=True)
    max_viewers = models.PositiveIntegerField(_("most viewers at once"), default=300)
    active = models.BooleanField(_("active"), default=True)
    record = models.BooleanField(
        _("record"),
        default=False,
        help_text=_("Every publication is recorded, without re-encoding, from start to end."),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("stream")
        verbose_name_plural = _("streams")

    def __str__(self) -> str:
        return self.slug

    @property
    def public(self) -> bool:
        return not self.viewer_key_digest

    def set_keys(self, *, private: bool = False) -> tuple[str, str | None]:
        """New keys (returned once, in clear); the old ones stop working."""
        publish = new_key()
        self.publish_key_digest = digest(publish)
        viewer = new_key() if private else None
        self.viewer_key_digest = digest(viewer) if viewer else ""
        return publish, viewer

    def may_publish(self, key: str | None) -> bool:
        return bool(key) and hmac.compare_digest(digest(key), self.publish_key_digest)

    def may_view(self, key: str | None) -> bool:
        if self.public:
            return True
        return bool(key) and hmac.compare_digest(digest(key), self.viewer_key_digest)
