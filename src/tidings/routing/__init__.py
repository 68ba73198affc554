"""The broker model: exchanges, bindings, queues, consumers, acks, confirms.

AMQP 0-9-1 semantics as RabbitMQ implements them, with no wire format and no sockets.
"""
