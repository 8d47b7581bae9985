"""``manage.py media_stream create council --title "Sesja Rady"``: a stream for
WHIP publishers and WHEP players; prints its URLs and keys (shown only once)
as JSON. ``rotate`` gives a stream new keys, ``list`` shows them all."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from media.models import Stream


class Command(BaseCommand):
    help = "Create a WHIP/WHEP stream (prints its keys once), rotate its keys, or list streams."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        create.add_argument("slug")
        create.add_argument("--title", required=True)
        create.add_argument("--private", action="store_true", help="viewers need a key")
        create.add_argument("--max-viewers", type=int, default=300)
        create.add_argument("--record", action="store_true", help="record every publication")
        rotate = sub.add_parser("rotate")
        rotate.add_argument("slug")
        rotate.add_argument("--private", action="store_true")
        sub.add_parser("list")

    def handle(self, *args, action: str, **options):
        if action == "list":
            for stream in Stream.objects.order_by("slug"):
                access = "public" if stream.public else "private"
                self.stdout.write(f"{stream.slug}\t{access}\t{stream.title}")
            return
        if action == "create":
            stream = Stream(
                slug=options["slug"],
                title=options["title"],
                max_viewers=options["max_viewers"],
                record=options["record"],
            )
        else:
            stream = Stream.objects.filter(slug=options["slug"]).first()
            if stream is None:
                raise CommandError(f"no stream {options['slug']!r}")
        publish, viewer = stream.set_keys(private=options["private"])
        try:
            stream.full_clean()
        except ValidationError as exc:
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            raise CommandError(problems) from exc
        stream.save()
        self.stdout.write(
            json.dumps(
                {
                    "stream": stream.slug,
                    "whip": f"/whip/{stream.slug}",
                    "whep": f"/whep/{stream.slug}",
                    "publish_key": publish,
                    "viewer_key": viewer,
                },
                ensure_ascii=False,
            )
        )
