"""The Kafka face: Kafka's wire protocol on ``tidings serve --kafka-port``, over the broker's
streams (a topic of N partitions is N streams). See ``docs/kafka.md``."""
