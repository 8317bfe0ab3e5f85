"""Why a model did not load, in one line a person can act on.

diffusers and huggingface_hub report a failed load as the *last* exception of a chain: a hub that
cannot be reached, an offline switch, a gated repository or a repository that does not exist all
end as ``OSError: ... does not appear to have a file named model_index.json``. The real cause sits
further down the chain (``__cause__`` / ``__context__``). ``load_error_message`` walks it and names
the first cause it recognises, with what to do about it; the service logs that line once and
answers it on ``/readyz``, the CLI prints it instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ModelLoadError", "load_error_message"]


class ModelLoadError(RuntimeError):
    """A model that could not be loaded; ``str(e)`` is ``load_error_message``'s line."""


_NETWORK = (
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "ReadTimeout",
    "Timeout",
    "TimeoutException",
    "gaierror",
    "NameResolutionError",
    "MaxRetryError",
    "NewConnectionError",
)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and every exception behind it (causes first met first), without cycles."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _cause(model: str, chain: list[BaseException]) -> str:
    names = [type(e).__name__ for e in chain]

    def find(*wanted: str) -> BaseException | None:
        return next((e for e, n in zip(chain, names) if n in wanted), None)

    if find("OfflineModeIsEnabled"):
        return (
            "HF_HUB_OFFLINE=1 forbids downloads and the model is not in the local Hugging Face cache; "
            "unset HF_HUB_OFFLINE (or point GROUNDING_MODEL at a local folder)"
        )
    if find("GatedRepoError"):
        return (
            "a gated repository: accept its licence on its Hub page, then set HF_TOKEN "
            "(a token of the account that accepted it)"
        )
    if find("RepositoryNotFoundError"):
        return "no such repository on the Hugging Face Hub (or a private one: set HF_TOKEN)"
    if find("RevisionNotFoundError"):
        return "no such revision (branch, tag or commit) in the repository"
    net = find(*_NETWORK)
    if net is not None:
        return (
            f"cannot reach the Hugging Face Hub ({_first_line(net)}) and the model is not in the local "
            "cache; check the network, or download it once and point GROUNDING_MODEL at the folder"
        )
    if find("HFValidationError") and not Path(model).exists():
        return "neither a local folder nor a valid Hugging Face repository id"
    if find("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return "the repository has no model_index.json: not a diffusers pipeline"
    oom = find("OutOfMemoryError", "MemoryError")
    if oom is not None:
        return (
            f"out of memory while loading ({_first_line(oom)}); try GROUNDING_DTYPE=bfloat16, "
            "GROUNDING_OFFLOAD=model or GROUNDING_QUANTIZATION=int8"
        )
    missing = find("FileNotFoundError")
    if missing is not None:
        return f"a file is missing: {_first_line(missing)}"
    root = chain[0]
    if isinstance(root, ValueError):  # ours (not a pipeline folder, unsupported class): already a sentence
        return _first_line(root)
    return f"{type(root).__name__}: {_first_line(root)}"


def load_error_message(model: str | Path, exc: BaseException) -> str:
    """One line naming ``model`` and the real cause of ``exc`` (a failed ``Grounder.from_pretrained``)."""
    return f"cannot load model {str(model)!r}: {_cause(str(model), _chain(exc))}"
