"""MovieLens-100k, from the RecBole 1.2.1 wheel on the package index or from a local folder.

Source order:
1. `path=` a local folder in RecBole atomic format (ml-100k.inter/.user/.item[/.kg/.link]) or
   the original GroupLens layout (u.data, u.user, u.item);
2. the cache (`$FUNNELREC_CACHE`, default ~/.cache/funnelrec): `ml-100k/` extracted earlier;
3. `pip download --no-deps recbole==1.2.1` into the cache, sha256-checked, then extracted.

The result follows the data contract: interactions (user_id, item_id, rating, timestamp),
users (age, age_band, gender, occupation, zip_code, region), items (title, release_year,
publish_time, genres, directors, actors, authors). Directors/actors come from the .kg/.link
knowledge-graph files (Freebase relations), so the author channel has real authors.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl

from funnelrec.core.errors import DataError
from funnelrec.core.registry import DATASETS
from funnelrec.data.dataset import Dataset
from funnelrec.data.schema import Schema

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_PREFIX = "recbole/dataset_example/ml-100k/"
_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item", "ml-100k.kg", "ml-100k.link")
GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()

SCHEMA = Schema(
    interactions={"user_id": "categorical", "item_id": "categorical", "rating": "label", "timestamp": "time"},
    users={"user_id": "categorical", "age": "numeric", "age_band": "categorical", "gender": "categorical",
           "occupation": "categorical", "zip_code": "categorical", "region": "categorical"},
    items={"item_id": "categorical", "title": "categorical", "release_year": "categorical",
           "publish_time": "time", "genres": "multi", "directors": "multi", "actors": "multi",
           "authors": "multi"},
)


def cache_dir(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get("FUNNELREC_CACHE", "~/.cache/funnelrec")).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_ml100k(cache: str | Path | None = None) -> Path:
    """Return a folder holding the RecBole atomic files, downloading the wheel if needed."""
    root = cache_dir(cache)
    target = root / "ml-100k"
    if all((target / f).exists() for f in _FILES):
        return target
    wheel = root / "wheels" / RECBOLE_WHEEL
    if not wheel.exists():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "recbole==1.2.1", "-d", str(wheel.parent)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            proc = None
            err = str(e)
        else:
            err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        if proc is None or proc.returncode != 0 or not wheel.exists():
            raise DataError(
                "movielens-100k is not cached and could not be downloaded "
                f"(pip download recbole==1.2.1 failed: {err or 'no wheel'}); provide the files with "
                f"--path DIR (RecBole atomic ml-100k.* or GroupLens u.data/u.user/u.item), or put "
                f"{RECBOLE_WHEEL} into {wheel.parent}"
            )
    digest = _sha256(wheel)
    if digest != RECBOLE_SHA256:
        raise DataError(f"{wheel}: sha256 {digest[:16]}… does not match the expected {RECBOLE_SHA256[:16]}…; delete it and retry")
    tmp = root / "ml-100k.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as z:
        for f in _FILES:
            with z.open(_PREFIX + f) as src, open(tmp / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _read_atomic(path: Path) -> pl.DataFrame:
    """Read a RecBole atomic file (tab-separated, header `name:type`)."""
    try:
        df = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"{path}: malformed atomic file ({e})") from None
    return df.rename({c: c.split(":")[0] for c in df.columns})


def _age_band(age: pl.Expr) -> pl.Expr:
    return (
        pl.when(age < 18).then(pl.lit("<18")).when(age < 25).then(pl.lit("18-24")).when(age < 35)
        .then(pl.lit("25-34")).when(age < 45).then(pl.lit("35-44")).when(age < 56).then(pl.lit("45-55"))
        .otherwise(pl.lit("56+"))
    )


def _finish_users(users: pl.DataFrame) -> pl.DataFrame:
    return users.with_columns(
        pl.col("user_id").cast(pl.Int64),
        pl.col("age").cast(pl.Int64),
    ).with_columns(
        _age_band(pl.col("age")).alias("age_band"),
        # geo: the first digit of a US zip code is a national area (0 = New England … 9 = West);
        # non-numeric (Canadian) codes form their own region.
        pl.when(pl.col("zip_code").str.contains(r"^\d")).then(pl.col("zip_code").str.slice(0, 1))
        .otherwise(pl.lit("other")).alias("region"),
    ).select("user_id", "age", "age_band", "gender", "occupation", "zip_code", "region")


def _year_to_ts(year: pl.Expr) -> pl.Expr:
    # unix seconds at (about) 1 Jan of the year, by the mean Gregorian year; unknown year → 0
    return ((year.cast(pl.Int64, strict=False).fill_null(1970) - 1970) * 365.2425 * 86400).cast(pl.Int64)


def _kg_people(folder: Path) -> pl.DataFrame | None:
    kg_path, link_path = folder / "ml-100k.kg", folder / "ml-100k.link"
    if not (kg_path.exists() and link_path.exists()):
        return None
    link = _read_atomic(link_path).with_columns(pl.col("item_id").cast(pl.Int64))
    kg = _read_atomic(kg_path)
    rel = {"film.film.directed_by": "directors", "film.film.actor": "actors"}
    people = (
        kg.filter(pl.col("relation_id").is_in(list(rel)))
        .join(link, left_on="head_id", right_on="entity_id")
        .with_columns(pl.col("relation_id").replace_strict(rel).alias("role"))
    )
    out = link.select("item_id").unique()
    for role in ("directors", "actors"):
        agg = people.filter(pl.col("role") == role).group_by("item_id").agg(pl.col("tail_id").unique().sort().alias(role))
        out = out.join(agg, on="item_id", how="left")
    return out


def _load_atomic(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    inter = _read_atomic(folder / "ml-100k.inter").select(
        pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64),
        pl.col("rating").cast(pl.Float32), pl.col("timestamp").cast(pl.Float64).cast(pl.Int64),
    )
    users = _finish_users(_read_atomic(folder / "ml-100k.user"))
    items = _read_atomic(folder / "ml-100k.item").select(
        pl.col("item_id").cast(pl.Int64),
        pl.col("movie_title").alias("title"),
        pl.col("release_year").fill_null("unknown"),
        pl.col("class").fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != "")).alias("genres"),
    )
    people = _kg_people(folder)
    return inter, users, _finish_items(items, people)


def _finish_items(items: pl.DataFrame, people: pl.DataFrame | None) -> pl.DataFrame:
    empty = pl.lit([], dtype=pl.List(pl.String))
    if people is not None:
        items = items.join(people, on="item_id", how="left")
    else:
        items = items.with_columns(directors=empty, actors=empty)
    items = items.with_columns(
        pl.col("directors").fill_null(empty), pl.col("actors").fill_null(empty),
        _year_to_ts(pl.col("release_year")).alias("publish_time"),
    )
    return items.with_columns(pl.concat_list("directors", "actors").alias("authors")).select(
        "item_id", "title", "release_year", "publish_time", "genres", "directors", "actors", "authors"
    )


def _load_grouplens(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    try:
        inter = pl.read_csv(folder / "u.data", separator="\t", has_header=False,
                            new_columns=["user_id", "item_id", "rating", "timestamp"],
                            schema_overrides=[pl.Int64, pl.Int64, pl.Float32, pl.Int64])
        users = pl.read_csv(folder / "u.user", separator="|", has_header=False, infer_schema=False,
                            new_columns=["user_id", "age", "gender", "occupation", "zip_code"])
        raw = pl.read_csv(folder / "u.item", separator="|", has_header=False, infer_schema=False,
                          encoding="utf8-lossy", quote_char=None)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DataError(f"{folder}: malformed GroupLens file ({e})") from None
    if raw.width != 5 + len(GENRES):
        raise DataError(f"{folder / 'u.item'}: expected {5 + len(GENRES)} '|'-separated columns, got {raw.width}")
    cols = raw.columns
    genre_flags = [pl.when(pl.col(c) == "1").then(pl.lit(g)).otherwise(None) for c, g in zip(cols[5:], GENRES)]
    items = raw.select(
        pl.col(cols[0]).cast(pl.Int64).alias("item_id"),
        pl.col(cols[1]).str.replace(r"\s*\(\d{4}\)\s*$", "").alias("title"),
        pl.col(cols[2]).str.extract(r"(\d{4})$").fill_null("unknown").alias("release_year"),
        pl.concat_list(genre_flags).list.drop_nulls().alias("genres"),
    )
    return inter, _finish_users(users), _finish_items(items, None)


@DATASETS.register("movielens-100k")
def load_movielens_100k(path: str | Path | None = None, cache: str | Path | None = None) -> Dataset:
    """Load MovieLens-100k (see module doc for where the files come from)."""
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataError(f"movielens-100k: {folder} is not a directory")
        if (folder / "ml-100k.inter").exists():
            inter, users, items = _load_atomic(folder)
        elif (folder / "u.data").exists():
            inter, users, items = _load_grouplens(folder)
        else:
            raise DataError(f"movielens-100k: {folder} holds neither ml-100k.inter (RecBole) nor u.data (GroupLens)")
    else:
        inter, users, items = _load_atomic(fetch_ml100k(cache))
    return Dataset.build("movielens-100k", inter, SCHEMA, users=users, items=items)
