"""Text sources and token windows for calibration and evaluation."""

from pruneframe.data.sources import DataSourceError, TextSource, check_disjoint, data_dir, resolve_text
from pruneframe.data.windows import calibration_data, calibration_windows, count_tokens, token_windows

__all__ = [
    "DataSourceError",
    "TextSource",
    "check_disjoint",
    "data_dir",
    "resolve_text",
    "calibration_data",
    "calibration_windows",
    "count_tokens",
    "token_windows",
]
