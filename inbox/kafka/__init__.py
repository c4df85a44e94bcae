"""`inbox consume`: Titan's Kafka topic into the inbox (consumer.py), message by message sorted into
events, rejects and skips (batch.py), stored one transaction per batch (store.py)."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from inbox.settings import Settings


def cmd_consume(args: argparse.Namespace, settings: Settings) -> None:
    """The CLI command; confluent-kafka is imported only when it runs."""
    from inbox.cli import CliError, database_url
    from inbox.db.connect import with_role
    from inbox.kafka.consumer import KafkaIngestor, KafkaSetupError, check_schema, consumer_config

    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()  # the loop finishes the batch in hand, commits and leaves the group

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        consumer_config(settings)
        url = database_url(settings)
        dsn = with_role(url, settings.ingest_role)
        check_schema(dsn)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from exc
    KafkaIngestor(dsn, settings, stop, metrics_dsn=with_role(url, settings.readonly_role)).run()
