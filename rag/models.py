"""Resolving model ids and folders, with one clear error when a model cannot be had."""

from __future__ import annotations

from pathlib import Path

from rag.errors import ModelNotFoundError


def resolve_model(name: str, *, role: str, setting: str) -> str:
    """Return ``name`` if it is a local folder or a hub id present in the local cache.

    A hub id that is not cached is returned as well when the hub may be used, so that the
    library downloads it; with ``HF_HUB_OFFLINE=1`` it fails here, at once, with a message
    naming the missing model and the setting (``setting``, e.g. ``BABELRAG_EMBEDDING_MODEL``)
    that points at a local folder.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise missing_model(name, role=role, setting=setting, why="no such folder")
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:
        pass
    if constants.HF_HUB_OFFLINE:
        raise missing_model(name, role=role, setting=setting, why="not in the local cache and HF_HUB_OFFLINE is set")
    return name


def missing_model(name: str, *, role: str, setting: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{role} model {name!r} is not available ({why}); point {setting} (or the config file) "
        "at a local model folder, or allow downloads from the Hugging Face Hub"
    )
