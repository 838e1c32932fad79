"""sleepstream: real-time sleep detection from Apple Watch heart rate and motion."""

__version__ = "0.1.0"
