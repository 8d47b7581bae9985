"""``manage.py alerts_worker``: send the outbox of alert deliveries (several
may run; each claims its own rows; SIGTERM finishes the current batch)."""

from django.core.management.base import BaseCommand

from alerts.worker import Worker


class Command(BaseCommand):
    help = "Send alert deliveries from the durable outbox (run one or more)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one batch, then exit")

    def handle(self, *args, once: bool = False, **options):
        worker = Worker()
        if once:
            self.stdout.write(f"claimed {worker.run_once()}")
            return
        worker.run()
