"""Registered feature transformers (FEATURE_TRANSFORMERS), one per feature family.

Each is defined once and used alike when the training log is encoded and when request pairs
are scored; `FeatureEncoder` (features/encoder.py) composes them in `FAMILY_ORDER`, owns the
shared FID vocabulary and lays their columns out in the ranking batch. Contract: base.py.
"""

from funnelrec.features.transformers.base import FeatureColumns, FeatureTransformer, FitContext
from funnelrec.features.transformers.fields import (
    COUNT_FEATURES,
    CountFeatures,
    CountFeaturesConfig,
    DenseColumns,
    DenseColumnsConfig,
    FieldFids,
    FieldFidsConfig,
)
from funnelrec.features.transformers.history import (
    TIME_FEATURES,
    AffinityFeatures,
    AffinityFeaturesConfig,
    MatchFeatures,
    MatchFeaturesConfig,
    SequenceFeatures,
    SequenceFeaturesConfig,
    TimeFeatures,
    TimeFeaturesConfig,
)
from funnelrec.features.transformers.pairs import (
    CONTEXT_FEATURES,
    ContextFeatures,
    ContextFeaturesConfig,
    CrossFeatures,
    CrossFeaturesConfig,
)
from funnelrec.features.transformers.statistics import (
    CF_FEATURES,
    NeighborhoodCFFeatures,
    NeighborhoodCFFeaturesConfig,
    TargetEncodingFeatures,
    TargetEncodingFeaturesConfig,
)

# The order FeatureEncoder fits the families in: it fixes the FID slots (FieldFids, then count
# buckets, crosses, context) and the order of the dense columns. Crosses and sequences read
# fields fitted before them.
FAMILY_ORDER = (FieldFids, CountFeatures, CrossFeatures, ContextFeatures, DenseColumns, SequenceFeatures,
                MatchFeatures, AffinityFeatures, TargetEncodingFeatures, NeighborhoodCFFeatures, TimeFeatures)

__all__ = [
    "CF_FEATURES", "CONTEXT_FEATURES", "COUNT_FEATURES", "FAMILY_ORDER", "TIME_FEATURES",
    "AffinityFeatures", "AffinityFeaturesConfig", "ContextFeatures", "ContextFeaturesConfig", "CountFeatures",
    "CountFeaturesConfig", "CrossFeatures", "CrossFeaturesConfig", "DenseColumns", "DenseColumnsConfig",
    "FeatureColumns", "FeatureTransformer", "FieldFids", "FieldFidsConfig", "FitContext", "MatchFeatures",
    "MatchFeaturesConfig", "NeighborhoodCFFeatures", "NeighborhoodCFFeaturesConfig", "SequenceFeatures",
    "SequenceFeaturesConfig", "TargetEncodingFeatures", "TargetEncodingFeaturesConfig", "TimeFeatures",
    "TimeFeaturesConfig",
]
