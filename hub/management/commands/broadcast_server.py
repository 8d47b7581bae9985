import asyncio

from django.core.management.base import BaseCommand

from hub.broadcast_server import BroadcastServer


class Command(BaseCommand):
    help = (
        "Serve the broadcast path (/ws/live/) for large audiences, as a lean "
        "websockets process. Needs REDIS_URL to share topics with the web processes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100)
        parser.add_argument(
            "--no-uvloop", action="store_true", help="use the standard asyncio event loop"
        )

    def handle(self, *args, host, port, no_uvloop, **options):
        from django.conf import settings

        if not settings.REDIS_URL:
            self.stderr.write(
                "REDIS_URL is not set: this process would share no topics with the web "
                "process. In the embedded default daphne serves /ws/live/ itself."
            )
            raise SystemExit(2)
        server = BroadcastServer(host=host, port=port)
        if no_uvloop:
            asyncio.run(server.serve_forever())
        else:
            import uvloop

            uvloop.run(server.serve_forever())
