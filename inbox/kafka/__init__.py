"""Titan's Kafka topic into the inbox (`inbox consume`, inbox/commands/consume.py): consumer.py reads
message by message, batch.py sorts them into events, rejects and skips, store.py stores one
transaction per batch."""
