"""What `funnelrec init` sees in a team's files, and the schema + funnel config it writes for them.

    plan = inspect_files("events.parquet", items="items.csv")
    plan.schema_yaml()      # every column typed, each line commented with what was found
    plan.config_yaml()      # data, labels, channels, ranker columns, rules fitting those columns

Found by reading each file once (data/tabular.py `read_table`: CSV/TSV with the separator
sniffed, or Parquet):

- the id and time columns, by name (user_id, visitorid, customer_id …; item_id, sku, product_id
  …; timestamp, ts, event_time …) unless given; renamed to the contract's names through
  `data.columns` of the config;
- the time unit: unix seconds, milliseconds, microseconds or nanoseconds (by the median's
  magnitude, as the loader reads them) or ISO date strings; anything else is refused here, with
  the column and the first value that is neither;
- the event-type column (event_type, event, action, behavior … with at most 50 values) and its
  values, each mapped to a task: view/click → ctr, cart/purchase → conversion (purchase weighted
  3), like → like, watch → watch_time; the online meaning (`means`) of names the funnel's event
  types spell differently (add_to_cart → cart, transaction → purchase);
- every other column's kind: numeric (all values numbers), multi ('|' in ≥ 20 % of the values, or
  a Parquet list), time (ISO dates), else categorical; a categorical column is a ranker feature
  when it repeats (distinct values ≤ half the rows — a title is shown, not learned from), a
  numeric one when it has ≤ 100 distinct values.

Channels follow the catalogue: itemCF, Swing and popularity always; EASE up to 5,000 items (its
closed form is I × I); a tag channel on the first multi-valued (else repeating categorical) item
column; the ranker (LR) over the feature columns with one task per mapped label, learning from at
most 3,000 users' label events (`data.label_users`: its fit grows with users × candidates); a
rule keeping purchased items out of answers for 30 days when purchases are logged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from funnelrec.core.errors import DataError
from funnelrec.data.source import FLAG_VALUES

ID_NAMES = {
    "user_id": ("userid", "user", "uid", "visitorid", "visitor", "customerid", "customer", "clientid", "memberid",
                "buyerid", "accountid", "personid", "viewerid"),
    "item_id": ("itemid", "item", "productid", "product", "sku", "movieid", "articleid", "contentid", "videoid",
                "offerid", "asin", "iid", "goodsid", "listingid"),
    "timestamp": ("timestamp", "ts", "time", "eventtime", "datetime", "date", "createdat", "eventtimestamp",
                  "timems", "tsms", "unixtime", "eventts", "occurredat"),
}
EVENT_NAMES = ("eventtype", "event", "type", "action", "behavior", "behaviour", "interaction", "interactiontype",
               "eventname", "activity", "actiontype", "kind")
#: event name (normalized) → (task, weight, the funnel's event type it means online)
EVENT_ROLES = {
    "view": ("ctr", 1.0, "click"), "pageview": ("ctr", 1.0, "click"), "detail": ("ctr", 1.0, "click"),
    "click": ("ctr", 1.0, "click"), "clicked": ("ctr", 1.0, "click"), "pv": ("ctr", 1.0, "click"),
    "cart": ("conversion", 1.0, "cart"), "addtocart": ("conversion", 1.0, "cart"),
    "addtobasket": ("conversion", 1.0, "cart"), "basket": ("conversion", 1.0, "cart"),
    "purchase": ("conversion", 3.0, "purchase"), "buy": ("conversion", 3.0, "purchase"),
    "order": ("conversion", 3.0, "purchase"), "transaction": ("conversion", 3.0, "purchase"),
    "checkout": ("conversion", 3.0, "purchase"), "bought": ("conversion", 3.0, "purchase"),
    "like": ("like", 1.0, "like"), "favorite": ("like", 1.0, "like"), "fav": ("like", 1.0, "like"),
    "wishlist": ("like", 1.0, "like"), "watch": ("watch_time", 1.0, "watch_time"),
    "watchtime": ("watch_time", 1.0, "watch_time"), "play": ("watch_time", 1.0, "watch_time"),
    "impression": ("", 1.0, "impression"), "impressions": ("", 1.0, "impression"),
    "expose": ("", 1.0, "impression"), "exposure": ("", 1.0, "impression"), "exposed": ("", 1.0, "impression"),
    "show": ("", 1.0, "impression"), "shown": ("", 1.0, "impression"), "display": ("", 1.0, "impression"),
}
#: a 0/1 column of an impression log (one row per item shown) → the event its 1 means; its 0 rows
#: are impressions: exposure only, left out of the fit (data/source.py `LabelSpec.consumptions`)
FLAG_NAMES = {
    "click": "click", "clicked": "click", "isclick": "click", "clicklabel": "click", "label": "click",
    "converted": "purchase", "conversion": "purchase", "purchased": "purchase", "bought": "purchase",
    "liked": "like", "islike": "like",
}
MAX_EASE_ITEMS = 5000
MAX_LABEL_USERS = 3000  # the ranker's label users beyond which init samples them (data.label_users)


_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def _yaml_str(text: str) -> str:
    """`text` as a YAML scalar that reads back as this string: quoted unless it is a plain word
    ("1" would be the int 1, "true" the bool)."""
    plain = re.fullmatch(r"[A-Za-z_][\w-]*", text) and text.lower() not in _YAML_WORDS
    return text if plain else json.dumps(text, ensure_ascii=False)


def _names_a_consumption(events: pl.Series) -> bool:
    """Whether any value of an event column has a known role other than exposure."""
    values = events.drop_nulls().cast(pl.String).unique().head(50).to_list()
    return any(EVENT_ROLES.get(_norm(v), ("", 1.0, "impression"))[2] != "impression" for v in values)


def _flag_column(df: pl.DataFrame) -> tuple[str | None, tuple[str, str] | None]:
    """(the column, (its value meaning the event, the event)) of the first FLAG_NAMES column holding
    both 0 and 1 and nothing else (integers, booleans, or their text: a CSV is read as text);
    (None, None) when there is none."""
    for c in df.columns:
        event = FLAG_NAMES.get(_norm(c))
        dtype = df.schema[c]
        if event is None or not (dtype.is_numeric() or dtype in (pl.Boolean, pl.String)):
            continue
        values = set(df[c].drop_nulls().cast(pl.String).unique().head(3).to_list())
        for one, zero in FLAG_VALUES:
            if values == {one, zero}:
                return c, (one, event)
    return None, None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@dataclass
class Column:
    """One column as found: its kind, why, and whether the ranker learns from it."""

    name: str
    kind: str
    note: str
    feature: bool = False
    distinct: int = 0


@dataclass
class TableInfo:
    path: Path
    rows: int
    columns: list[Column]
    rename: dict[str, str] = field(default_factory=dict)  # contract name → the file's name


@dataclass
class InitPlan:
    """What was found in the files; renders the schema and the funnel config."""

    tables: dict[str, TableInfo]
    event_column: str | None
    events: dict[str, int]  # event value → rows
    time_note: str
    n_users: int
    n_items: int
    # the event column is a 0/1 flag of an impression log: (its value meaning the event, the
    # EVENT_ROLES name of that event); None = an event-type column or none
    flag: tuple[str, str] | None = None
    flag_nulls: int = 0  # rows of the flag column without a value

    # ------------------------------------------------------------------ schema
    def schema_yaml(self) -> str:
        out = [f"# schema written by `funnelrec init` on {datetime.now(UTC):%Y-%m-%d} — the kind of every column",
               "# kinds: categorical (one token), numeric (a number), multi ('|'-separated tokens), time (unix s /"
               " ISO date)"]
        for t in ("interactions", "users", "items"):
            info = self.tables.get(t)
            if info is None:
                continue
            out.append(f"{t + ':':<33} # {info.path.name}: {info.rows:,} rows")
            for c in info.columns:
                out.append(f"  {_yaml_str(c.name) + ': ' + c.kind:<31} # {c.note}")
        return "\n".join(out) + "\n"

    # ------------------------------------------------------------------ config
    def _features(self, table: str, kinds: tuple[str, ...] = ("categorical", "numeric", "multi")) -> list[str]:
        info = self.tables.get(table)
        return [] if info is None else [c.name for c in info.columns if c.feature and c.kind in kinds]

    def label_map(self) -> dict[str, tuple[str, float, str]]:
        """event value → (task, weight, means) for the values with a known role."""
        out = {}
        if self.flag is not None:  # a 0/1 column: its 1 is the event, its 0 an impression
            one, role = self.flag
            return {ev: EVENT_ROLES[role] if ev == one else EVENT_ROLES["impression"] for ev in self.events}
        for ev in self.events:
            role = EVENT_ROLES.get(_norm(ev))
            if role is not None:
                out[ev] = role
        return out

    def config_yaml(self, schema_path: str, paths: dict[str, str]) -> str:
        """The funnel config; `paths` holds each table's file as the config should name it
        (relative to the config's folder)."""
        L: list[str] = []

        def line(text: str, note: str = "") -> None:
            L.append(f"{text:<57} # {note}" if note else text)

        line(f"# funnel config written by `funnelrec init` on {datetime.now(UTC):%Y-%m-%d}: "
             f"{self.n_users:,} users, {self.n_items:,} items")
        line("# train: funnelrec train --config THIS · serve: funnelrec serve --config THIS (fits first if needed)")
        line("data:", "the files (paths relative to this file)")
        for t in ("interactions", "users", "items"):
            if t in paths:
                line(f"  {t}: {paths[t]}", f"{self.tables[t].rows:,} rows")
        line(f"  schema: {schema_path}", "the kind of every column")
        if self.n_users > MAX_LABEL_USERS:
            line(f"  label_users: {MAX_LABEL_USERS}", f"the ranker learns from a sample of {MAX_LABEL_USERS:,} of "
                 f"{self.n_users:,} users (0 = all: a longer fit)")
        rename = self.tables["interactions"].rename
        if rename:
            line("  columns: {" + ", ".join(f"{k}: {_yaml_str(v)}" for k, v in rename.items()) + "}",
                 "the contract's names ← your files' names")
        lm = self.label_map()
        tasks = list(dict.fromkeys(r[0] for r in lm.values() if r[0])) or ["ctr"]
        if self.event_column:
            line("labels:", "which events teach which ranker task")
            line(f"  event_column: {_yaml_str(self.event_column)}", f"{len(self.events)} event types" if self.flag is None else
                 f"a 0/1 flag: {self.flag[0]} = a {self.flag[1]}, else an impression (one row per item shown)"
                 + (f"; {self.flag_nulls:,} rows without a value: impressions too" if self.flag_nulls else ""))
            line("  map:" if lm else "  map: {}", "event → task (a positive of it), sample weight, online meaning"
                 if lm else "no event with a known role: every row an interaction (map yours below)")
            for ev, n in self.events.items():
                if ev not in lm:
                    line(f"    # {ev}: {{task: ctr}}", f"{n:,} rows; no known role: an interaction only")
                    continue
                task, w, means = lm[ev]
                parts = ([f"task: {task}"] if task else []) + ([f"weight: {w:g}"] if w != 1.0 else [])
                parts += [f"means: {means}"] if means != ev else []
                key = _yaml_str(ev)
                line(f"    {key}: {{{', '.join(parts)}}}",
                     f"{n:,} rows" + ("; exposure only: left out of the fit" if means == "impression" else ""))
        line("recall:", "the channels that propose candidates")
        line("  channels:")
        chans = [("itemcf", 300, "", "items co-consumed with the user's history"),
                 ("swing", 200, "", "item pairs shared by users with little else in common"),
                 ("hot", 100, "", "popular items; also the answer for unknown users")]
        if self.n_items <= MAX_EASE_ITEMS:
            chans.insert(0, ("ease", 300, "", f"closed-form item-item regression ({self.n_items:,} items ≤ "
                                              f"{MAX_EASE_ITEMS:,})"))
        else:
            line("    # - {name: ease, n: 300}", f"left out: {self.n_items:,} items > {MAX_EASE_ITEMS:,} (I × I)")
        tag = (self._features("items", ("multi",)) or self._features("items", ("categorical",)) or [None])[0]
        if tag:
            chans.append(("tag", 100, f", params: {{column: {_yaml_str(tag)}}}",
                          f"popular items of the user's top {tag} values"))
        for name, n, extra, note in chans:
            line(f"    - {{name: {name}, n: {n}{extra}}}", note)
        total = 400 if self.n_items <= MAX_EASE_ITEMS else 300
        line(f"  merge: {{total: {total}, priority: [{', '.join(c[0] for c in chans)}]}}",
             "candidates handed to ranking, channel by channel")
        line("rank:", "the fine ranker over the merged candidates")
        line("  model: lr", "any RANKERS name: deepfm, dcnv2, mmoe …")
        line(f"  tasks: [{', '.join(tasks)}]", "one logit per task, from labels.map")
        line("  epochs: 5")
        line("  label_folds: 0", "1 doubles the ranker's labels (and its fit time)")
        for key, table in (("user_columns", "users"), ("item_columns", "items")):
            cols = self._features(table)
            line(f"  {key}: [{', '.join(map(_yaml_str, cols))}]", f"{table} attributes learned as embeddings"
                 if cols else f"no repeating {table} attribute found")
        match = (self._features("items", ("multi",)) + self._features("items", ("categorical",)))[:2]
        line(f"  match_columns: [{', '.join(map(_yaml_str, match))}]",
             "history ∩ candidate overlap features" if match else "none found")
        line("  ridge_lambda: " + ("500.0" if self.n_items <= MAX_EASE_ITEMS else "0.0"),
             "item-item ridge match feature (0 = off: I × I)")
        line("fusion: {weights: {" + ", ".join(f"{t}: 1.0" for t in tasks) + "}}",
             "final score = Σ weight · task logit")
        div = (self._features("items", ("categorical", "multi")) or [""])[0]
        line(f"rerank: {{method: none{', column: ' + _yaml_str(div) if div else ''}}}",
             f"cap / mmr diversify on {div}" if div else "no column to diversify on")
        bought = [ev for ev, (_, _, means) in lm.items() if means == "purchase"]
        if bought:
            line("rules:", "items kept out of answers")
            line(f"  - {{types: [{', '.join(map(_yaml_str, bought))}], ttl_s: 2592000}}",
                 "bought → not offered again for 30 days")
        line("k: 10", "items per answer (a request may ask for another k)")
        return "\n".join(L) + "\n"


def _parse_floats(s: pl.Series) -> pl.Series:
    return s.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)


def _time_note(path: Path, s: pl.Series, name: str | None = None) -> str:
    """How the loader will read this time column (`name`: its name in the file); DataError naming
    the first unreadable value."""
    name = name or s.name
    if isinstance(s.dtype, pl.Datetime | pl.Date):
        return f"{s.dtype} values → unix seconds"
    vals = s.drop_nulls()
    if vals.len() == 0:
        raise DataError(f"{path}: time column {name!r} holds no value")
    nums = vals.cast(pl.Float64, strict=False) if vals.dtype.is_numeric() else _parse_floats(vals)
    if nums.null_count() == 0:
        med = float(nums.abs().median())
        for unit, name in ((10**9, "nanoseconds"), (10**6, "microseconds"), (10**3, "milliseconds")):
            if med >= 1e8 * unit:
                return f"unix {name} (median {med:.3g}) → read as seconds"
        return f"unix seconds (median {med:.3g})"
    dt = vals.cast(pl.String).str.strip_chars().str.to_datetime(strict=False, time_zone="UTC")
    bad = vals.filter(dt.is_null() & nums.is_null())
    if bad.len():
        raise DataError(f"{path}: column {name!r} is the time column, but holds {bad[0]!r} (neither unix time "
                        f"nor an ISO date); fix the value or name another column with --time-col")
    return f"ISO dates (e.g. {vals[0]!r}) → unix seconds"


def _kind(s: pl.Series, rows: int) -> Column:
    vals = s.drop_nulls()
    n_null = s.null_count()
    miss = f", {n_null:,} missing" if n_null else ""
    if isinstance(s.dtype, pl.List):
        n = vals.explode().n_unique() if vals.len() else 0
        return Column(s.name, "multi", f"lists of {n:,} distinct tokens{miss}", feature=n > 1, distinct=n)
    if vals.len() == 0:
        return Column(s.name, "categorical", "every value missing: not a feature")
    if s.dtype == pl.Boolean:
        return Column(s.name, "categorical", f"true/false{miss}", feature=True, distinct=2)
    if s.dtype.is_numeric() or _parse_floats(vals).null_count() == 0:
        n = vals.n_unique()
        feat = 1 < n <= 100
        why = "a feature (few values)" if feat else "not a feature (continuous: bucket it into a column to use it)"
        return Column(s.name, "numeric", f"numbers, {n:,} distinct{miss}; {why}", feature=feat, distinct=n)
    text = vals.cast(pl.String)
    if text.str.contains("|", literal=True).mean() >= 0.2:
        n = text.str.split("|").explode().n_unique()
        return Column(s.name, "multi", f"'|'-separated, {n:,} distinct tokens{miss}", feature=n > 1, distinct=n)
    sample = text.head(1000).str.strip_chars()
    if sample.str.contains(r"^\d{4}-\d{2}-\d{2}").mean() >= 0.95 and \
            sample.str.to_datetime(strict=False, time_zone="UTC").null_count() == 0:
        return Column(s.name, "time", f"ISO dates (e.g. {sample[0]!r}){miss}")
    n = vals.n_unique()
    feat = 1 < n <= max(2, rows // 2)
    why = "a feature" if feat else "not a feature (nearly unique: shown in answers, e.g. fields=" + s.name + ")"
    return Column(s.name, "categorical", f"{n:,} distinct{miss}; {why}", feature=feat, distinct=n)


def _find(df: pl.DataFrame, role: str, given: str | None, path: Path) -> str:
    if given:
        if given not in df.columns:
            raise DataError(f"{path}: no column {given!r} (given for {role}); columns: {', '.join(df.columns)}")
        return given
    if role in df.columns:
        return role
    names = {_norm(c): c for c in df.columns}
    for cand in ID_NAMES[role]:
        if cand in names:
            return names[cand]
    flag = {"user_id": "--user-col", "item_id": "--item-col", "timestamp": "--time-col"}[role]
    raise DataError(f"{path}: no {role} column found (looked for {', '.join(ID_NAMES[role][:6])} …); "
                    f"columns: {', '.join(df.columns)}; name it with {flag}")


def inspect_files(interactions: str | Path, users: str | Path | None = None, items: str | Path | None = None,
                  user_col: str | None = None, item_col: str | None = None, time_col: str | None = None,
                  event_col: str | None = None) -> InitPlan:
    """Read the files once and decide every column (see the module doc). DataError naming the
    file and column for what cannot be decided: an empty file, a missing id or time column, an
    unreadable time value, an event column that does not exist."""
    from funnelrec.data.tabular import read_table

    ipath = Path(interactions)
    df = read_table(ipath)
    if df.height == 0:
        raise DataError(f"{ipath}: no interactions (an empty file or a header only); nothing to fit")
    rename = {}
    for role, given in (("user_id", user_col), ("item_id", item_col), ("timestamp", time_col)):
        col = _find(df, role, given, ipath)
        if col != role:
            if role in df.columns:
                raise DataError(f"{ipath}: has both {role!r} and {col!r}; drop or rename one")
            rename[role] = col
    for role, col in rename.items():
        df = df.rename({col: role})
    for role in ("user_id", "item_id"):
        if df[role].null_count():
            raise DataError(f"{ipath}: column {rename.get(role, role)!r} ({role}) has {df[role].null_count():,} "
                            f"missing values")
    time_note = _time_note(ipath, df["timestamp"], rename.get("timestamp"))
    ev = event_col
    if ev is None:
        names = {_norm(c): c for c in df.columns}
        ev = next((names[n] for n in EVENT_NAMES if n in names and df[names[n]].n_unique() <= 50), None)
    elif ev not in df.columns:
        raise DataError(f"{ipath}: no column {ev!r} (given for the event type); columns: {', '.join(df.columns)}")
    flag = None
    if event_col is None and (ev is None or not _names_a_consumption(df[ev])):
        # an impression log: a 0/1 column saying whether the shown item was clicked (also beside
        # a "type" column of content kinds, or an event column of impressions only)
        found, flag = _flag_column(df)
        ev = found if found is not None else ev
    events: dict[str, int] = {}
    if ev is not None:
        counts = df[ev].cast(pl.String).value_counts(sort=True).drop_nulls(ev)
        events = dict(zip(counts[ev].to_list(), counts["count"].to_list()))
    cols = [Column("user_id", "categorical", f"{df['user_id'].n_unique():,} users"
                   + (f" (file column {rename['user_id']!r})" if "user_id" in rename else "")),
            Column("item_id", "categorical", f"{df['item_id'].n_unique():,} items"
                   + (f" (file column {rename['item_id']!r})" if "item_id" in rename else "")),
            Column("timestamp", "time", time_note + (f" (file column {rename['timestamp']!r})"
                                                     if "timestamp" in rename else ""))]
    for c in df.columns:
        if c in ("user_id", "item_id", "timestamp"):
            continue
        if c == ev:
            cols.append(Column(c, "categorical", "event type: " + ", ".join(f"{k} {v:,}" for k, v in events.items())))
            continue
        col = _kind(df[c], df.height)
        col.feature = False  # interaction columns are not ranker attributes
        col.note = col.note.split(";")[0]
        if col.kind == "time":
            _time_note(ipath, df[c])
        cols.append(col)
    tables = {"interactions": TableInfo(ipath, df.height, cols, rename)}
    n_users, n_items = df["user_id"].n_unique(), df["item_id"].n_unique()
    for table, path, role in (("users", users, "user_id"), ("items", items, "item_id")):
        if path is None:
            continue
        p = Path(path)
        t = read_table(p)
        if t.height == 0:
            raise DataError(f"{p}: an empty {table} file (a header only); leave it out or fill it")
        src = rename.get(role, role)
        if role not in t.columns and src in t.columns:
            t = t.rename({src: role})
        if role not in t.columns:
            raise DataError(f"{p}: no {role!r} column (nor {src!r}); columns: {', '.join(t.columns)}")
        dup = t[role].is_duplicated()
        if dup.any():
            raise DataError(f"{p}: column {src!r} has duplicate ids (e.g. {t[role].filter(dup)[0]!r}); "
                            f"the {table} file needs one row per id")
        tcols = [Column(role, "categorical", f"{t.height:,} {table}")]
        for c in t.columns:
            if c != role:
                tcols.append(_kind(t[c], t.height))
        tables[table] = TableInfo(p, t.height, tcols)
        if table == "items":
            n_items = max(n_items, t.height)
    return InitPlan(tables, ev, events, time_note, n_users, n_items, flag,
                    int(df[ev].null_count()) if flag is not None else 0)
