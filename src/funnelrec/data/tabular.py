"""The generic loader: interactions (+ optional users/items) from CSV or Parquet plus a schema YAML.

    interactions.csv              schema.yaml
      user_id,item_id,timestamp,click   interactions: {user_id: categorical, item_id: categorical,
      u1,i9,1700000000,1                               timestamp: time, click: label}
                                        items: {item_id: categorical, tags: multi}

The format follows the file extension (.csv, .tsv, .parquet/.pq); a .csv whose header holds no
comma but a ';', tab or '|' is read with that separator (sniffed from the header line). Columns
are coerced to their schema kind: numeric/label → Int64 when every value is an integer else
Float64; time → Int64 unix seconds (integers, floats, or ISO dates/datetimes read as UTC; numbers
in milliseconds, microseconds or nanoseconds — a median ≥ 1e11, 1e14, 1e17 — are scaled down to
seconds); multi/sequence → list[str]
('|'-separated in CSV, '' → []); categorical → String, except user_id/item_id, which become
Int64 when every value in every table is a plain integer. Columns the schema does not declare
are kept as read. Every problem raises one line naming the file, column and first bad value;
an interactions file without a single row is an error (there is nothing to fit).

An optional `follows` file (columns user_id, author_id, ts; data/schema.py) is the follow graph:
user_id coerced like the other tables, author_id to String, ts like a time column.
"""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl

from funnelrec.core.errors import ConfigError, DataError
from funnelrec.core.registry import DATASETS
from funnelrec.data.dataset import Dataset
from funnelrec.data.schema import Schema

_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_PARQUET = (".parquet", ".pq")


def _ragged_row(path: Path, sep: str) -> str | None:
    """Describe the first row whose field count differs from the header's (a full scan)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=sep)
        try:
            header = next(reader)
        except StopIteration:
            return None
        for row in reader:
            if row and len(row) != len(header):
                return f"line {reader.line_num} has {len(row)} fields, the header has {len(header)}"
    return None


def read_table(path: str | Path) -> pl.DataFrame:
    """Read one CSV/TSV (all columns as strings) or Parquet file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    ext = p.suffix.lower()
    if ext in _PARQUET:
        try:
            return pl.read_parquet(p)
        except (pl.exceptions.PolarsError, OSError) as e:
            raise DataError(f"{p}: malformed Parquet file ({str(e).splitlines()[0]})") from None
    if ext not in _SEPARATORS:
        raise DataError(f"{p}: unknown file type {ext!r}; known: .csv, .tsv, .parquet, .pq")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: empty file (no header, no rows)")
    sep = _sniff_separator(p, _SEPARATORS[ext])
    try:
        df = pl.read_csv(p, separator=sep, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as e:
        where = _ragged_row(p, sep)
        raise DataError(f"{p}: malformed CSV ({where or str(e).splitlines()[0]})") from None
    if df.width and df[df.columns[-1]].null_count():  # short rows read as nulls: look for one
        where = _ragged_row(p, sep)
        if where:
            raise DataError(f"{p}: malformed CSV ({where})")
    return df


def _sniff_separator(path: Path, default: str) -> str:
    """`default`, unless the header line lacks it and holds exactly one of ; tab | (a European
    CSV export, a TSV named .csv)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    if default in header:
        return default
    found = [c for c in (";", "\t", "|") if c in header]
    return found[0] if len(found) == 1 else default


def _to_seconds(t: pl.Series) -> pl.Series:
    """Unix times in s, ms, µs or ns (told apart by the median's magnitude) as seconds."""
    med = t.drop_nulls().abs().median()
    if med is None:
        return t
    for unit in (10**9, 10**6, 10**3):  # ns, µs, ms: a median beyond 1e17, 1e14, 1e11 (the year 5138 in s)
        if med >= 1e8 * unit:
            return t // unit
    return t


def _first_bad(raw: pl.Series, parsed: pl.Series) -> str:
    bad = raw.filter(raw.is_not_null() & parsed.is_null())
    return repr(bad[0]) if bad.len() else "?"


def _is_int_column(s: pl.Series) -> bool:
    if s.dtype.is_integer():
        return True
    if s.dtype != pl.String:
        return False
    raw = s.str.strip_chars()
    same = (raw.cast(pl.Int64, strict=False).cast(pl.String) == raw).fill_null(False)
    return bool((same | raw.is_null()).all())


def _coerce(df: pl.DataFrame, kinds: dict[str, str], file: Path, table: str, int_ids: dict[str, bool]
            ) -> pl.DataFrame:
    out = []
    for col, kind in kinds.items():
        if col not in df.columns:
            raise DataError(f"{file}: missing column {col!r} (declared {kind} for {table} in the schema)")
        s = df[col]
        if col in ("user_id", "item_id"):
            out.append(s.str.strip_chars().cast(pl.Int64) if int_ids[col] and s.dtype == pl.String
                       else s if int_ids[col] else s.cast(pl.String))
        elif s.dtype != pl.String:
            if kind == "time":  # typed (Parquet) times become unix seconds like CSV ones
                if isinstance(s.dtype, pl.Datetime | pl.Date):
                    out.append(s.cast(pl.Datetime("us")).dt.epoch("s").alias(col))
                elif s.dtype.is_float() or s.dtype.is_integer():
                    out.append(_to_seconds(s.cast(pl.Int64)).alias(col))
            continue  # other typed (Parquet) columns: Schema.validate checks the kind
        elif kind in ("numeric", "label"):
            raw = s.str.strip_chars()
            as_int = raw.cast(pl.Int64, strict=False)
            if as_int.null_count() == raw.null_count():
                out.append(as_int.alias(col))
                continue
            as_float = raw.cast(pl.Float64, strict=False)
            if as_float.null_count() != raw.null_count():
                raise DataError(f"{file}: column {col!r} is {kind}, but holds {_first_bad(s, as_float)}")
            out.append(as_float.alias(col))
        elif kind == "time":
            raw = s.str.strip_chars()
            parsed = raw.cast(pl.Float64, strict=False).cast(pl.Int64)
            if parsed.null_count() != raw.null_count():
                rest = raw.zip_with(parsed.is_null(), pl.Series([None] * len(raw), dtype=pl.String))
                try:
                    dt = rest.str.to_datetime(strict=True, time_zone="UTC")
                except pl.exceptions.PolarsError:
                    dt = rest.str.to_datetime(strict=False, time_zone="UTC")
                    raise DataError(f"{file}: column {col!r} is time (unix seconds or ISO date), "
                                    f"but holds {_first_bad(rest, dt)}") from None
                parsed = _to_seconds(parsed).fill_null(dt.dt.epoch("s"))
                out.append(parsed.alias(col))
                continue
            out.append(_to_seconds(parsed).alias(col))
        elif kind in ("multi", "sequence"):
            out.append(s.fill_null("").str.split("|").list.eval(pl.element().filter(pl.element() != "")).alias(col))
    return df.with_columns(out) if out else df


@DATASETS.register("tabular")
def load_tabular(interactions: str | Path, schema: str | Path, users: str | Path | None = None,
                 items: str | Path | None = None, name: str = "tabular", follows: str | Path | None = None,
                 columns: dict[str, str] | None = None) -> Dataset:
    """Load interactions (+ users, items, follows) files typed by a schema YAML (see the module doc).
    `columns` maps the contract's user_id / item_id / timestamp to the files' own names for them
    (renamed on read, in every table that has them)."""
    sch = Schema.load(schema)
    paths = {"interactions": interactions, "users": users, "items": items}
    for table in ("users", "items"):
        extra = [c for c in getattr(sch, table) if c not in ("user_id", "item_id")]
        if paths[table] is None and extra:
            raise ConfigError(f"{schema}: the schema declares {table} columns {extra} but no {table} file was given")
    frames = {t: read_table(p) for t, p in paths.items() if p is not None}
    if columns:
        for t, df in frames.items():
            ren = {src: dst for dst, src in columns.items() if src in df.columns and src != dst}
            if ren and any(dst in df.columns for dst in ren.values()):
                raise DataError(f"{paths[t]}: has both {list(ren)} and {list(ren.values())}; rename one (data.columns)")
            frames[t] = df.rename(ren) if ren else df
    ids = {}
    for id_col in ("user_id", "item_id"):
        cols = [df[id_col] for t, df in frames.items() if id_col in df.columns and id_col in getattr(sch, t)]
        ids[id_col] = all(_is_int_column(c) for c in cols)
    if frames["interactions"].height == 0:
        raise DataError(f"{interactions}: no interactions (an empty file or a header only); nothing to fit")
    typed = {t: _coerce(df, getattr(sch, t), Path(paths[t]), t, ids) for t, df in frames.items()}
    for t, id_col in (("users", "user_id"), ("items", "item_id")):  # one row per id, named here
        df = typed.get(t)
        if df is not None and id_col in df.columns and df[id_col].is_duplicated().any():
            dup = df.filter(df[id_col].is_duplicated())[id_col]
            raise DataError(f"{paths[t]}: column {(columns or {}).get(id_col, id_col)!r} has duplicate ids ({dup.n_unique()} ids, e.g. "
                            f"{dup[0]!r}); the {t} file needs one row per id")
    graph = None
    if follows is not None:
        kinds = {"user_id": "categorical", "author_id": "categorical", "ts": "time"}
        raw = read_table(follows)
        if "author_id" in raw.columns and raw["author_id"].dtype != pl.String:
            raw = raw.with_columns(pl.col("author_id").cast(pl.String))
        graph = _coerce(raw, kinds, Path(follows), "follows", ids)
    return Dataset.build(name, typed["interactions"], sch, users=typed.get("users"), items=typed.get("items"),
                         follows=graph)
