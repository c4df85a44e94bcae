"""`inbox consume`: Titan's Kafka topic into the inbox (inbox/kafka); stops on SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from inbox.commands.config import add_command, ensure_database
from inbox.commands.errors import CliError
from inbox.settings import Settings


def cmd_consume(args: argparse.Namespace, settings: Settings) -> None:
    """confluent-kafka is imported only when this command runs."""
    from inbox.db.connect import with_role
    from inbox.kafka.consumer import ConsumerGroup, KafkaSetupError, check_schema, consumer_config
    from inbox.metrics import MetricsPortUnavailable

    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()  # every member finishes the batch in hand, commits and leaves the group

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        consumer_config(settings)
        url = ensure_database(settings)
        dsn = with_role(url, settings.ingest_role)
        check_schema(dsn)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from exc
    # A busy metrics port, or a setting librdkafka refuses (named, never its value): both before the
    # consumer joins the group.
    try:
        ConsumerGroup(dsn, settings, stop, metrics_dsn=with_role(url, settings.readonly_role)).run()
    except (MetricsPortUnavailable, KafkaSetupError) as exc:
        raise CliError(str(exc)) from exc


def register(sub: Any) -> None:
    add_command(
        sub, "consume", cmd_consume, "read the Kafka topic into the inbox (INBOX_KAFKA_*); stops on SIGTERM"
    )
