from .base import MemoryTracker, NullTracker, Tracker

__all__ = ["Tracker", "NullTracker", "MemoryTracker"]
