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

All the layers of one container share one :class:`~runtime.images.budget.Budget` (what
they may unpack to together); a layer already extracted is charged what its extraction
used (``<name>-<sha256[:16]>.usage.json`` next to it). An archive refused is remembered by
its sha256 (:mod:`runtime.images.refusals`) and not downloaded again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.api.spec import SdkLayer
from runtime.errors import ArchiveError, ArchiveRefused, FetchError, HostSetupError, LayerNotFound
from runtime.images import refusals
from runtime.images.budget import Budget, Usage
from runtime.images.extract import sweep_staging, unpack_download
from runtime.images.fetch import download, fetch_bytes, sweep_partial
from runtime.settings import UnpackLimits
from runtime.util.cancel import Cancel
from runtime.util.files import read_json, write_json_atomic

__all__ = (
    "LAYER_INDEX_ENV",
    "LayerIndex",
    "LayerSource",
    "index_document_url",
    "resolve_sdk",
    "resolve_sdks",
    "sweep_cache",
)

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


def resolve_sdks(
    layers: Sequence[SdkLayer],
    cache: Path,
    *,
    index_url: str | None = None,
    limits: UnpackLimits | None = None,
    cancel: Cancel | None = None,
) -> list[Path]:
    """The extracted directories of one container's ``layers``, downloading and extracting
    those not cached yet, all of them together within ``limits``."""
    budget = Budget(limits or UnpackLimits())
    return [
        resolve_sdk(layer, cache, index_url=index_url, budget=budget, cancel=cancel)
        for layer in layers
    ]


def resolve_sdk(
    layer: SdkLayer,
    cache: Path,
    *,
    index_url: str | None = None,
    budget: Budget | None = None,
    cancel: Cancel | None = None,
) -> Path:
    """The extracted directory of ``layer``, downloading and extracting it if needed
    (charged to ``budget``, default: the default limits for this layer alone).

    Raises :class:`ArchiveRefused` for a layer over the budget (also when it was refused
    before: then without downloading it), :class:`~runtime.util.cancel.Cancelled` when
    ``cancel`` is set (nothing of it is left in the cache but a verified download)."""
    budget = budget or Budget()
    url, sha256 = _source(layer, index_url)
    final = cache / "layers" / f"{layer.name}-{sha256[:16]}"
    if final.is_dir():
        _charge_cached(final, budget)
        return final
    archive = cache / "downloads" / _download_name(layer.name, url, sha256)
    refusals.recall(cache, sha256, budget, str(archive))
    download(url, archive, sha256=sha256, cancel=cancel)
    try:
        usage = unpack_download(archive, final, budget=budget, cancel=cancel)
    except ArchiveError as exc:
        refusals.remember(cache, sha256, exc)
        raise
    if usage.entries:
        write_json_atomic(_usage_path(final), usage.as_tuple())
    return final


def sweep_cache(cache: Path) -> list[str]:
    """Remove what killed processes left in the cache: staging trees and partial
    downloads nobody holds any more; return their names."""
    return (
        sweep_staging(cache / "layers")
        + sweep_staging(cache / "rootfs")
        + sweep_partial(cache / "downloads")
    )


def _source(layer: SdkLayer, index_url: str | None) -> tuple[str, str]:
    """The URL and sha256 of ``layer``, looked up in the index if it is given by version."""
    if layer.url is not None and layer.sha256 is not None:
        return layer.url, layer.sha256
    if layer.url is not None or layer.sha256 is not None:
        raise ValueError(f"sdk layer {layer.name!r}: url and sha256 must be given together")
    if layer.version is not None:
        return _look_up(layer.name, layer.version, index_url)
    raise ValueError(f"sdk layer {layer.name!r}: give either url and sha256, or version")


def _usage_path(final: Path) -> Path:
    return final.with_name(f"{final.name}.usage.json")


def _charge_cached(final: Path, budget: Budget) -> None:
    """Charge ``budget`` with what the extraction of the cached ``final`` used."""
    recorded = read_json(_usage_path(final))
    if not (isinstance(recorded, list) and len(recorded) == 3):
        return  # extracted before usage was recorded: nothing known to charge
    usage = Usage(*(int(n) for n in recorded))
    reason = budget.over(usage)
    if reason is not None:
        raise ArchiveRefused(str(final), "", reason, at_least=usage.as_tuple())
    budget.used.add(usage)


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
