"""Calibration and evaluation text: named sources, local files, token windows."""

from hyperprune.data.fetch import cache_dir, fetch_npm_package, fetch_pypi_wheel_files
from hyperprune.data.sources import (
    TextSource,
    available_sources,
    load_text_source,
    register_source,
    split_holdout,
    strip_brown_tags,
    strip_markdown,
)
from hyperprune.data.windows import (
    BOS_PER_WINDOW,
    DOCUMENT_SEPARATOR,
    BosMode,
    bos_per_window,
    calibration_windows,
    evaluation_windows,
    source_text,
    spread_indices,
    tokenize_stream,
)

__all__ = [
    "BOS_PER_WINDOW",
    "BosMode",
    "DOCUMENT_SEPARATOR",
    "bos_per_window",
    "TextSource",
    "available_sources",
    "cache_dir",
    "calibration_windows",
    "evaluation_windows",
    "fetch_npm_package",
    "fetch_pypi_wheel_files",
    "load_text_source",
    "register_source",
    "source_text",
    "split_holdout",
    "spread_indices",
    "strip_brown_tags",
    "strip_markdown",
    "tokenize_stream",
]
