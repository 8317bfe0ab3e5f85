"""Pipeline: the ``Grounder`` facade over the stage objects, and video orchestration."""
