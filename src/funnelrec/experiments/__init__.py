"""Experiment platform: layered bucketing, precedence, ramp-ups, holdouts, statistics, reports.

The serving/pipeline side calls `ExperimentPlatform.assign(user_id)`; analysis calls
`build_report(df, ReportConfig(...))` or the estimators in `experiments.stats`.
"""

from funnelrec.experiments.assignment import (
    Assignment,
    ExperimentPlatform,
    RampDecision,
    RampUp,
    apply_params,
    bucket_of,
    buckets_of,
    flatten_params,
)
from funnelrec.experiments.config import ExperimentsConfig, load_experiments_config

__all__ = [
    "Assignment",
    "ExperimentPlatform",
    "ExperimentsConfig",
    "RampDecision",
    "RampUp",
    "apply_params",
    "bucket_of",
    "buckets_of",
    "flatten_params",
    "load_experiments_config",
]
