"""Results: the SQLite store of rows (``store``) and the report rendered from them (``render``).

Everything derives from the ONE row definition, ``board.rows.ResultRow``.
"""

from host.results.render import (
    FORMATS,
    OK,
    RENDERERS,
    errors,
    latest,
    render,
    render_csv,
    render_html,
    render_jsonl,
    render_md,
    report,
    tables,
)
from host.results.store import (
    DEFAULT_STORE,
    INDEXED,
    STORE_SCHEMA_VERSION,
    ResultStore,
    StoreError,
    coerce_row,
    default_store,
    iter_rows_jsonl,
    parse_line,
)

__all__ = ["DEFAULT_STORE", "FORMATS", "INDEXED", "OK", "RENDERERS", "STORE_SCHEMA_VERSION", "ResultStore",
    "StoreError", "coerce_row", "default_store", "errors", "iter_rows_jsonl", "latest", "parse_line", "render",
    "render_csv", "render_html", "render_jsonl", "render_md", "report", "tables"]
