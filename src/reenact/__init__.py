"""reenact: synthetic talking-head videos for research, marked as synthetic."""

__version__ = "0.1.0"
