"""One FeatureService per model version: training and serving both fetch features through these."""

from feast import FeatureService

from features.repo.entities import offer
from features.repo.views import (
    VIEWS,
    customer_attributes_fv,
    customer_fv,
    engagement_fv,
    latest_activity_fv,
    offer_fv,
)

# Open propensity: who the customer is and how, and when, they engage, and when they were last on the site.
open_propensity_v1 = FeatureService(
    name="open_propensity_v1",
    features=[customer_fv, customer_attributes_fv, engagement_fv, latest_activity_fv],
    description=(
        "The open-propensity model's inputs: who the customer is and how, and when, they engage, and what they "
        "did last on the site (pushed as events arrive)."
    ),
)

# Send time: the same inputs, scored at every hour of the window (it may share the open model's booster).
send_time_v1 = FeatureService(
    name="send_time_v1",
    features=[customer_fv, customer_attributes_fv, engagement_fv, latest_activity_fv],
    description="The send-time model's inputs: the open model's, scored at every hour of the window.",
)

# Next best offer: the customer's engagement, category interest and latest activity, and the offer itself.
next_best_offer_v1 = FeatureService(
    name="next_best_offer_v1",
    features=[customer_fv, customer_attributes_fv, engagement_fv, latest_activity_fv, offer_fv],
    description=(
        "The next-best-offer model's inputs: the customer's engagement and interests, what they last viewed and "
        "bought, and the offer."
    ),
)

FEATURE_SERVICES = {
    "open_propensity": open_propensity_v1,
    "send_time": send_time_v1,
    "next_best_offer": next_best_offer_v1,
}


def offer_feature_refs(service: FeatureService = next_best_offer_v1) -> list[str]:
    """The `view:feature` references of the offer features `service` provides (those of views keyed by offer).

    What serving reads per offer from the online store, derived from the service rather than written by hand:
    `store.get_online_features(features=offer_feature_refs(), entity_rows=[{"offer_id": ...}, ...])`.
    """
    by_offer = {view.name for view in VIEWS if offer.name in view.entities}
    return [
        f"{projection.name_to_use()}:{feature.name}"
        for projection in service.feature_view_projections
        if projection.name in by_offer
        for feature in projection.features
    ]
