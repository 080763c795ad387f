"""What each console page shows, assembled from the service's own answers (no second funnel).

The router (router.py) stays thin: it parses the request, calls one of these with the service,
and renders the template. Every function here reads what the service already exposes —
`recommend(..., explain=True, debug=True)` and its `FunnelTrace`, `similar`, the feature
service, the history store, the event log, the experiment platform, the Prometheus text of
/metrics — and turns dense item indices into labelled items of the served catalogue.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from funnelrec.core.types import PAD
from funnelrec.online.state import HISTORY_TYPES

#: item columns tried, in order, for the label of an item
TITLE_COLUMNS = ("title", "name", "item_name", "product_name")
HIDDEN_COLUMNS = ("item_idx", "user_idx")


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, list | tuple):
        head = ", ".join(str(x) for x in v[:4])
        return head + (f" … (+{len(v) - 4})" if len(v) > 4 else "")
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts))) + " UTC"


class Catalogue:
    """Labels of the items of one served funnel: id, title (when a title-like column exists) and
    the other attributes, by dense index."""

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded
        items = loaded.funnel.dataset_.items
        self.items = items
        self.title = next((c for c in TITLE_COLUMNS if c in items.columns), None)
        self.attrs = [c for c in items.columns if c not in HIDDEN_COLUMNS and c not in ("item_id", self.title)]

    def label(self, idx: np.ndarray | list[int]) -> list[dict[str, Any]]:
        idx = np.asarray(idx, np.int64)
        idx = idx[(idx >= 0) & (idx < self.items.height)]
        if not len(idx):
            return []
        rows = self.items[idx].to_dicts()
        return [{"idx": int(i), "item_id": r["item_id"], "title": None if self.title is None else r[self.title],
                 "attrs": {c: _cell(r[c]) for c in self.attrs}} for i, r in zip(idx.tolist(), rows)]

    def by_id(self, item_id: str) -> dict[str, Any] | None:
        i = self.loaded.funnel.dataset_.item_ids.index(item_id)
        return self.label([i])[0] if i >= 0 else None


# --------------------------------------------------------------------------------- user page
def user_profile(svc: Any, user_id: str) -> dict[str, Any]:
    """The users-table row, the fit-time history size, the feature service's view."""
    cur, _ = svc.live_catalogue(svc.current)
    f = cur.funnel
    uidx = f.dataset_.user_ids.index(user_id)
    row = {}
    if uidx >= 0:
        users = f.dataset_.users
        got = users.filter(users["user_idx"] == uidx).to_dicts() if "user_idx" in users.columns else []
        row = {k: _cell(v) for k, v in (got[0] if got else {}).items() if k not in HIDDEN_COLUMNS}
    hist = f.stats_.history
    n_fit = int(hist.indptr[uidx + 1] - hist.indptr[uidx]) if uidx >= 0 else 0
    feats = svc.user_features(user_id)
    return {"user_id": user_id, "known": uidx >= 0, "profile": row, "fit_history": n_fit,
            "features": None if feats is None else feats}


def live_history(svc: Any, user_id: str, n: int = 20) -> list[dict[str, Any]]:
    """The user's real-time history (what the next request reads), newest first, labelled."""
    cur, _ = svc.live_catalogue(svc.current)
    h = svc.history.recent(str(user_id))
    if not len(h):
        return []
    cat = Catalogue(cur)
    keys, ts, types = h.keys[::-1][:n], h.ts[::-1][:n], h.types[::-1][:n]
    idx = cur.indices_of_keys(keys)
    labels = {d["idx"]: d for d in cat.label(idx[idx >= 0])}
    out = []
    for k, i, t, c in zip(keys.tolist(), idx.tolist(), ts.tolist(), types.tolist()):
        lab = labels.get(i)
        out.append({"time": fmt_time(t), "ts": t, "type": HISTORY_TYPES[c] if c < len(HISTORY_TYPES) else str(c),
                    "item_id": lab["item_id"] if lab else f"key {k}", "title": lab["title"] if lab else None})
    return out


def funnel_view(svc: Any, user_id: str, k: int, sample: int = 12) -> dict[str, Any]:
    """One real request (`recommend(explain=True, debug=True)`: it is served, logged and cached as
    any other) drawn stage by stage from its `FunnelTrace`."""
    for _ in range(3):  # the trace holds dense indices of the funnel the request ran on
        out = svc.recommend(user_id, k=k, explain=True, debug=True)
        cur, _ = svc.live_catalogue(svc.current)
        if cur.version == out.model_version:
            break
    rec, tr = out.rec, out.rec.trace
    cat = Catalogue(cur)
    answer = out.to_dict(debug=True, explain=True)
    view: dict[str, Any] = {"request_id": out.request_id, "model_version": out.model_version,
                            "cold_start": rec.cold_start, "experiments": out.experiments,
                            "timings": {s: round(v, 3) for s, v in rec.timings_ms.items()},
                            "fusion_weights": answer.get("fusion_weights", {})}
    # recall: each channel's candidates
    channels = []
    for name, items, scores in tr.recall:
        keep = items != PAD
        its, scs = items[keep], scores[keep]
        labs = cat.label(its[:sample])
        for d, s in zip(labs, scs[:sample].tolist()):
            d["score"] = s
        channels.append({"name": name, "n": int(keep.sum()), "items": labs})
    view["channels"] = channels
    # merge: the merged list, what each channel holds of it, its quota
    m = tr.merged
    bits = m.sources.astype(np.uint64)
    held = {c: int(((bits >> np.uint64(j)) & np.uint64(1)).sum()) for j, c in enumerate(m.channels)}
    quotas = dict(getattr(tr.merge, "quotas", {}) or {})
    view["merge"] = {"n": len(m), "total": getattr(tr.merge, "total", None),
                     "strategy": getattr(tr.merge, "strategy", None),
                     "priority": list(getattr(tr.merge, "priority", []) or []),
                     "per_channel": [{"name": c["name"], "recalled": c["n"], "in_merged": held.get(c["name"], 0),
                                      "quota": quotas.get(c["name"])} for c in channels],
                     "items": [{**d, "channels": m.channels_of(p)}
                               for p, d in enumerate(cat.label(m.items[:sample]))]}
    # filter: what the exposure / exclude / catalogue filter removed
    kept_f = set(tr.after_filter.items.tolist())
    removed = [int(i) for i in m.items.tolist() if i not in kept_f]
    view["filter"] = {"before": len(m), "after": len(tr.after_filter), "removed": cat.label(removed[:sample]),
                      "n_removed": len(removed)}
    # pre-rank cut
    ranked = tr.ranked
    kept_r = set(ranked.items.tolist())
    cut = [int(i) for i in tr.after_filter.items.tolist() if i not in kept_r]
    pre = None
    if tr.prerank_scores is not None:
        order = np.argsort(-tr.prerank_scores, kind="stable")[:sample]
        pre = [{**d, "score": float(tr.prerank_scores[p])} for p, d in zip(order.tolist(), cat.label(ranked.items[order]))]
    view["prerank"] = {"enabled": tr.prerank_scores is not None, "before": len(tr.after_filter), "after": len(ranked),
                       "n_cut": len(cut), "cut": cat.label(cut[:sample]), "top": pre}
    # rank: per-task and fused scores over every ranked candidate
    tasks = list(tr.task_scores)
    order = np.argsort(-np.asarray(tr.fused), kind="stable")[: max(sample, k + 5)]
    top_set = set(tr.top.tolist())
    view["rank"] = {"tasks": tasks, "n": len(ranked), "items": [
        {**d, "fused": float(tr.fused[p]), "tasks": {t: float(tr.task_scores[t][p]) for t in tasks},
         "shown": p in top_set, "fused_position": j}
        for j, (p, d) in enumerate(zip(order.tolist(), cat.label(ranked.items[order])))]}
    # re-rank and the final list
    final = []
    labs = {d["item_id"]: d for d in cat.label(rec.items)}
    for it in answer["items"]:
        ex = it.get("explain", {})
        d = labs.get(it["item_id"], {"item_id": it["item_id"], "title": None, "attrs": {}})
        final.append({**d, "score": it["score"], "channels": it["channels"], "position": ex.get("position"),
                      "before": ex.get("position_before_rerank"), "tasks": ex.get("task_scores", {}),
                      "prerank": ex.get("prerank_score"), "recall_scores": it.get("recall_scores", {})})
    plan_rerank = cur.funnel.config.rerank
    view["rerank"] = {"method": getattr(plan_rerank, "method", "none"),
                      "moved": sum(1 for f in final if f["before"] is not None and f["before"] != f["position"])}
    view["final"] = final
    view["stages"] = [("recalled (Σ channels)", sum(c["n"] for c in channels)), ("merged", len(m)),
                      ("after filter", len(tr.after_filter)), ("after pre-rank", len(ranked)), ("final", len(final))]
    return view


# --------------------------------------------------------------------------------- item page
def item_view(svc: Any, item_id: str, k: int = 10) -> dict[str, Any] | None:
    cur, _ = svc.live_catalogue(svc.current)
    cat = Catalogue(cur)
    me = cat.by_id(item_id)
    if me is None:
        return None
    f = cur.funnel
    neighbours = []
    for ch in f.similar_sources():
        got = svc.similar(item_id, k=k, channel=ch) or {"items": []}
        labs = {d["item_id"]: d for d in cat.label(f.dataset_.item_ids.indices([i["item_id"] for i in got["items"]]))}
        neighbours.append({"channel": ch, "items": [{**labs.get(i["item_id"], {"item_id": i["item_id"], "title": None}),
                                                     "score": i["score"]} for i in got["items"]]})
    merged = svc.similar(item_id, k=k) if f.similar_sources() else None
    if merged is not None:
        labs = {d["item_id"]: d for d in cat.label(f.dataset_.item_ids.indices([i["item_id"] for i in merged["items"]]))}
        merged = {**merged, "items": [{**labs.get(i["item_id"], {"item_id": i["item_id"], "title": None}), **i}
                                      for i in merged["items"]]}
    hist = f.stats_.history
    idx = me["idx"]
    n_fit = int((hist.indices == idx).sum())
    feats = svc.item_features(item_id)
    return {"item": me, "neighbours": neighbours, "merged": merged, "fit_consumptions": n_fit,
            "features": None if feats is None else feats["features"], "sources": f.similar_sources()}


# --------------------------------------------------------------------------------- experiments
def experiments_view(svc: Any) -> dict[str, Any] | None:
    """Layers, their arms and live buckets, rollouts, ramps, and each experiment's log report."""
    from funnelrec.experiments.live import log_report

    platform = svc.experiments
    if platform is None:
        return None
    cfg = platform.config
    n = cfg.n_buckets
    events = svc.events.read()
    layers = []
    for layer in cfg.layers:
        arms = []
        for exp, variant, start, end in platform.arms(layer.name):
            share = platform.traffic_shares(exp).get(variant, 0.0)
            arms.append((exp, variant, start, end, int(round(share * n))))
        free = n - sum(a[3] - a[2] for a in arms)
        layers.append({"name": layer.name, "owns": list(getattr(layer, "owns", []) or []), "arms": arms,
                       "free": free})
    experiments = []
    for e in cfg.experiments:
        shares = platform.traffic_shares(e.name)
        rep, why = log_report(events, e.name, e.control_variant, shares, alpha=0.05)
        ramp = platform.ramps.get(e.name)
        rows = []
        if rep is not None:
            for r in rep.rows:
                rows.append({"metric": r.metric, "variant": r.variant, "users": r.users, "value": r.value,
                             "abs_lift": r.abs_lift, "ci": r.abs_ci, "rel_lift": r.rel_lift, "rel_ci": r.rel_ci,
                             "p": r.p_value, "q": r.q_value, "avp": r.always_valid_p})
        srm = None
        if rep is not None:
            s = rep.srm
            srm = {"counts": list(s.counts), "expected": [round(x, 1) for x in s.expected], "chi2": s.statistic,
                   "p": s.p_value, "mismatch": s.mismatch}
        forest = [(f"{m} · {v}", res.rel_lift * 100, res.rel_ci[0] * 100, res.rel_ci[1] * 100)
                  for (m, v), res in (rep.results.items() if rep is not None else [])]
        experiments.append({
            "name": e.name, "layer": e.layer, "control": e.control_variant,
            "variants": [{"name": v.name, "params": dict(v.params or {}), "share": shares.get(v.name, 0.0)}
                         for v in e.variants],
            "rows": rows, "why": why, "srm": srm, "forest": forest,
            "ramp": None if ramp is None else {**ramp.state(), "steps": [
                {**st, "at": fmt_time(st["at"]) if st["at"] is not None else None} for st in ramp.steps()],
                "scheduled": ramp.config.scheduled}})
    rollouts = [{"name": r.name, "params": dict(r.params), "holdout": r.holdout} for r in cfg.rollouts]
    return {"n_buckets": n, "layers": layers, "experiments": experiments, "rollouts": rollouts,
            "n_events": events.height}


# --------------------------------------------------------------------------------- models & serving
def parse_metrics(text: str) -> dict[str, Any]:
    """The /metrics exposition parsed into what the Models page shows: requests and errors per
    route, per-stage latency histograms, feedback counters, reloads, served versions."""
    from prometheus_client.parser import text_string_to_metric_families

    requests: dict[str, dict[str, float]] = {}
    errors: dict[str, float] = {}
    stages: dict[str, dict[float, float]] = {}
    stage_sum: dict[str, float] = {}
    stage_n: dict[str, float] = {}
    events: dict[str, float] = {}
    versions: list[str] = []
    rejected: dict[str, float] = {}
    scalars: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lab = s.labels
            if s.name == "funnelrec_http_requests_total":
                requests.setdefault(lab["path"], {})[lab["status"]] = \
                    requests.get(lab["path"], {}).get(lab["status"], 0.0) + s.value
            elif s.name == "funnelrec_http_errors_total":
                errors[lab["path"]] = errors.get(lab["path"], 0.0) + s.value
            elif s.name == "funnelrec_stage_latency_ms_bucket":
                le = float("inf") if lab["le"] in ("+Inf", "inf") else float(lab["le"])
                stages.setdefault(lab["stage"], {})[le] = s.value
            elif s.name == "funnelrec_stage_latency_ms_sum":
                stage_sum[lab["stage"]] = s.value
            elif s.name == "funnelrec_stage_latency_ms_count":
                stage_n[lab["stage"]] = s.value
            elif s.name == "funnelrec_feedback_events_total":
                events[lab["type"]] = s.value
            elif s.name == "funnelrec_model_info" and s.value > 0:
                versions.append(lab["version"])
            elif s.name == "funnelrec_http_rejected_total":
                rejected[lab["reason"]] = s.value
            elif s.name in ("funnelrec_cold_start_total", "funnelrec_model_reloads_total", "funnelrec_http_in_flight"):
                scalars[s.name] = s.value
    hist = {}
    for st, b in stages.items():
        les = sorted(b)
        hist[st] = {"le": les, "cumulative": [int(b[x]) for x in les], "count": int(stage_n.get(st, 0)),
                    "mean": stage_sum.get(st, 0.0) / stage_n[st] if stage_n.get(st) else None,
                    "p50": _quantile(les, [b[x] for x in les], 0.5), "p99": _quantile(les, [b[x] for x in les], 0.99)}
    routes = []
    for path, by in sorted(requests.items()):
        total = sum(by.values())
        err5 = sum(v for c, v in by.items() if c.startswith("5"))
        err4 = sum(v for c, v in by.items() if c.startswith("4"))
        routes.append({"path": path, "total": int(total), "by_status": {c: int(v) for c, v in sorted(by.items())},
                       "error_rate": err5 / total if total else 0.0, "client_error_rate": err4 / total if total else 0.0})
    return {"routes": routes, "stages": hist, "events": {k: int(v) for k, v in events.items()},
            "versions": versions, "rejected": {k: int(v) for k, v in rejected.items()},
            "cold_start": int(scalars.get("funnelrec_cold_start_total", 0)),
            "reloads": int(scalars.get("funnelrec_model_reloads_total", 0)),
            "in_flight": int(scalars.get("funnelrec_http_in_flight", 0)),
            "total_requests": int(sum(r["total"] for r in routes))}


def _quantile(les: list[float], cum: list[float], q: float) -> float | None:
    """The upper bound of the bucket holding the q-quantile (a histogram's resolution)."""
    if not cum or cum[-1] <= 0:
        return None
    target = q * cum[-1]
    for le, c in zip(les, cum):
        if c >= target:
            return le
    return les[-1]


class RateMeter:
    """QPS between looks: the total request count at each look, kept for the last few; the rate is
    Δcount / Δt over the window (None before the second look)."""

    def __init__(self, window: int = 30) -> None:
        self.samples: deque[tuple[float, int]] = deque(maxlen=window)

    def look(self, total: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, total))
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def serving_view(svc: Any, metrics_text: str, meter: RateMeter) -> dict[str, Any]:
    from funnelrec.online.served import current_version, read_status

    m = parse_metrics(metrics_text)
    health = svc.health()
    learner = None
    watch = svc.config.watch_dir
    if watch:
        vdir = Path(watch) / "versions"
        names = sorted(p.name for p in vdir.iterdir() if p.is_dir() and not p.name.startswith(".")) if vdir.is_dir() else []
        status = read_status(watch) or {}
        learner = {"dir": watch, "current": current_version(watch), "versions": names[-10:], "n_versions": len(names),
                   "status": {k: status.get(k) for k in ("version", "offset", "events_seen", "quarantined",
                                                           "lag_events", "lag_s", "step_s")},
                   "updated_at": fmt_time(status.get("updated_at")) if status.get("updated_at") else None,
                   "watcher": health.get("served")}
    reloads = [{**r, "at": fmt_time(r["at"])} for r in reversed(list(getattr(svc, "reload_log", [])))]
    qps = meter.look(m["total_requests"])
    return {"health": {**health, "loaded_at": fmt_time(health.get("loaded_at"))}, "metrics": m, "qps": qps,
            "learner": learner, "reloads": reloads}


# --------------------------------------------------------------------------------- offline reports
def reports_view(reports_dir: Path) -> dict[str, Any]:
    """The newest `funnelrec evaluate funnel --json` output in `reports_dir` (any *.json with
    "channels" and "funnel"), other JSON reports by name, and the PNG plots there (ROC,
    calibration: `evaluate ctr --plot`)."""
    out: dict[str, Any] = {"dir": str(reports_dir), "exists": reports_dir.is_dir(), "funnel": None, "others": [],
                           "pngs": []}
    if not reports_dir.is_dir():
        return out
    jsons = sorted(reports_dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in jsons:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "channels" in data and "funnel" in data and out["funnel"] is None:
            out["funnel"] = {"file": p.name, "at": fmt_time(p.stat().st_mtime), **_funnel_report(data)}
        elif isinstance(data, dict):
            flat = {k: v for k, v in data.items() if isinstance(v, int | float | str)}
            out["others"].append({"file": p.name, "at": fmt_time(p.stat().st_mtime), "values": flat})
    out["pngs"] = [{"file": p.name, "at": fmt_time(p.stat().st_mtime)}
                   for p in sorted(reports_dir.glob("*.png"), key=lambda p: p.name)]
    return out


def _funnel_report(data: dict[str, Any]) -> dict[str, Any]:
    chans = data.get("channels", {})
    ks = sorted({int(k.split("@")[1]) for m in chans.values() for k in m if k.startswith("recall@")})
    rows = [{"name": n, **{k: v for k, v in m.items() if isinstance(v, int | float)}} for n, m in chans.items()]
    curves = {n: [m.get(f"recall@{k}") for k in ks] for n, m in chans.items()}
    return {"dataset": data.get("dataset"), "protocol": data.get("protocol"), "users": data.get("users"),
            "rows": rows, "ks": ks, "klabels": [f"@{k}" for k in ks], "curves": curves, "merged": data.get("merged", {}),
            "funnel_metrics": data.get("funnel", {}),
            "recall10": [m.get("recall@10", math.nan) for m in chans.values()],
            "ndcg10": [m.get("ndcg@10", math.nan) for m in chans.values()], "names": list(chans)}
