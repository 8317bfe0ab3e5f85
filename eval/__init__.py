"""Evaluation: dataset loaders in their official formats, the community's metrics, runners."""
