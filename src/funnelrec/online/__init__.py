"""The online loop (issue #10): what changes between two requests without a refit.

    /feedback ─► event log (SQLite) / Redis Stream ─┬─► state.py     real-time user history
                                                    ├─► features.py  windowed counters, profiles
                                                    ├─► catalogue.py live items: upsert, hide, expire
                                                    └─► learner.py   label join → incremental updates
                                                                     → guardrail → publish.py
    replay.py: a dataset's interactions in time order through the service (measures the loop)

Layering: state/features/catalogue import core, data and filter only (the service in pipeline/
reads them); learner/publish/replay import pipeline (they drive a funnel), and pipeline never
imports them.
"""
