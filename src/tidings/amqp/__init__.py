"""AMQP 0-9-1: a sans-IO protocol core (frames, connection state) and one asyncio driver.

Frames are encoded and decoded by pamqp, the codec aiormq and aio-pika are built on.
"""
