"""The Feast repository of sendwise: entities, sources, feature views and one FeatureService per model.

The objects are defined at module level, as in Feast's own templates. Their sources name files relative to
the feature tables folder of a home; `features.store` applies copies of them resolved against a home, and
never these objects themselves.
"""

from feast import Entity, FeatureService, FeatureView, FileSource, PushSource

from features.repo.entities import customer, offer
from features.repo.services import (
    FEATURE_SERVICES,
    next_best_offer_v1,
    offer_feature_refs,
    open_propensity_v1,
    send_time_v1,
)
from features.repo.sources import (
    customer_attributes_source,
    customer_source,
    email_state_push,
    email_state_table,
    engagement_source,
    latest_activity_push,
    latest_activity_table,
    offer_source,
)
from features.repo.views import (
    customer_attributes_fv,
    customer_fv,
    email_state_fv,
    engagement_fv,
    latest_activity_fv,
    offer_fv,
)

Definition = Entity | FileSource | PushSource | FeatureView | FeatureService

DEFINITIONS: list[Definition] = [
    customer,
    offer,
    customer_source,
    customer_attributes_source,
    engagement_source,
    offer_source,
    latest_activity_table,
    latest_activity_push,
    email_state_table,
    email_state_push,
    customer_fv,
    customer_attributes_fv,
    engagement_fv,
    offer_fv,
    latest_activity_fv,
    email_state_fv,
    open_propensity_v1,
    send_time_v1,
    next_best_offer_v1,
]

__all__ = ["DEFINITIONS", "FEATURE_SERVICES", "Definition", "offer_feature_refs"]
