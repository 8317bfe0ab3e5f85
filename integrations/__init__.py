"""Adapters that let other tools drive the service (FiftyOne). Each imports its tool, which is
never a dependency of the service: install the tool beside them (``make fiftyone``)."""
