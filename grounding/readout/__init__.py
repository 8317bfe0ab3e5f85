"""Read-out stage: words ↔ token positions, captured attention → referent maps (RefAM), AGLA
views, the answer contrast and head, presence features."""
