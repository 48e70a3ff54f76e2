"""SDK layers: read-only tarballs (a Python, a JDK, ...) mounted at ``/sdk/<name>``.

A layer is named either by ``url`` + ``sha256`` or by ``version``, which is looked up in
a *layer index*: an HTTP base URL, given by ``index_url`` (the runtime passes
``$SQUISH_LAYER_INDEX``, ``RuntimeSettings.layer_index``), serving ``<base>/index.json``
of this form::

    {
      "layers": {
        "python": {
          "3.12": {"url": "python-3.12.tar.gz", "sha256": "<64 lowercase hex digits>"},
          "3.11": {"url": "https://example.org/py/3.11.tar.gz", "sha256": "..."}
        }
      }
    }

``url`` may be absolute or relative to the base (``<base>/python-3.12.tar.gz`` above).
Extra keys are ignored, so the format can grow. The tarball (``.tar``, ``.tar.gz`` or
``.tar.xz``) holds the layer's tree at its top level (``./bin/python3``, ...).

A layer is downloaded into ``<cache>/downloads``, verified, extracted once (safely, see
:mod:`runtime.images.extract`) into ``<cache>/layers/<name>-<sha256[:16]>`` and reused from
there: once extracted, a layer given by ``url`` + ``sha256`` needs no network.
See ``docs/layers.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.api.spec import SdkLayer
from runtime.errors import FetchError, HostSetupError, LayerNotFound
from runtime.images.extract import unpack_download
from runtime.images.fetch import download, fetch_bytes

__all__ = ("LAYER_INDEX_ENV", "LayerIndex", "LayerSource", "index_document_url", "resolve_sdk")

LAYER_INDEX_ENV = "SQUISH_LAYER_INDEX"
"""The variable that names the layer index (read by ``RuntimeSettings``), for messages."""
_MAX_INDEX_BYTES = 4 * 1024 * 1024
_SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,100}")


class LayerSource(BaseModel):
    """Where one version of a layer is downloaded from, and its sha256."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    url: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LayerIndex(BaseModel):
    """The ``index.json`` document: layer name -> version -> source."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    layers: dict[str, dict[str, LayerSource]]


def index_document_url(base: str) -> str:
    """The URL of ``index.json`` for an index base URL (a URL ending in .json is kept)."""
    if urlsplit(base).path.endswith(".json"):
        return base
    return base.rstrip("/") + "/index.json"


def resolve_sdk(layer: SdkLayer, cache: Path, *, index_url: str | None = None) -> Path:
    """The extracted directory of ``layer``, downloading and extracting it if needed."""
    if layer.url is not None and layer.sha256 is not None:
        url, sha256 = layer.url, layer.sha256
    elif layer.url is not None or layer.sha256 is not None:
        raise ValueError(f"sdk layer {layer.name!r}: url and sha256 must be given together")
    elif layer.version is not None:
        url, sha256 = _look_up(layer.name, layer.version, index_url)
    else:
        raise ValueError(f"sdk layer {layer.name!r}: give either url and sha256, or version")
    final = cache / "layers" / f"{layer.name}-{sha256[:16]}"
    if final.is_dir():
        return final
    archive = download(
        url, cache / "downloads" / _download_name(layer.name, url, sha256), sha256=sha256
    )
    return unpack_download(archive, final)


def _look_up(name: str, version: str, index_url: str | None) -> tuple[str, str]:
    base = index_url
    if not base:
        raise HostSetupError(
            f"sdk layer {name} {version} is given by version, but no layer index is set",
            fix=f"set {LAYER_INDEX_ENV} to the base URL of a layer index (format: "
            "docs/layers.md), or give the layer's url and sha256",
        )
    document_url = index_document_url(base)
    raw = fetch_bytes(document_url, max_bytes=_MAX_INDEX_BYTES)
    try:
        index = LayerIndex.model_validate_json(raw)
    except ValidationError as exc:
        raise FetchError(document_url, f"not a valid layer index (docs/layers.md): {exc}") from exc
    source = index.layers.get(name, {}).get(version)
    if source is None:
        offered = ", ".join(sorted(index.layers.get(name, {}))) or "none"
        raise LayerNotFound(name, version, f"{document_url} (versions offered: {offered})")
    return urljoin(document_url, source.url), source.sha256


def _download_name(name: str, url: str, sha256: str) -> str:
    """``<name>-<sha256[:16]>-<basename of the URL>``, the basename only if it is tame."""
    basename = urlsplit(url).path.rsplit("/", 1)[-1]
    suffix = f"-{basename}" if _SAFE_FILE_NAME.fullmatch(basename) else ".tar"
    return f"{name}-{sha256[:16]}{suffix}"
