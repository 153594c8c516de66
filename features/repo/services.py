"""One FeatureService per model version: training and serving both fetch features through these."""

from feast import FeatureService

from features.repo.views import customer_attributes_fv, customer_fv, engagement_fv, offer_fv

# Open propensity: who the customer is and how, and when, they engage.
open_propensity_v1 = FeatureService(
    name="open_propensity_v1",
    features=[customer_fv, customer_attributes_fv, engagement_fv],
)

# Send time: the same inputs, scored at every hour of the window (it may share the open model's booster).
send_time_v1 = FeatureService(
    name="send_time_v1",
    features=[customer_fv, customer_attributes_fv, engagement_fv],
)

# Next best offer: the customer's engagement and category interest, and the offer itself.
next_best_offer_v1 = FeatureService(
    name="next_best_offer_v1",
    features=[customer_fv, customer_attributes_fv, engagement_fv, offer_fv],
)

FEATURE_SERVICES = {
    "open_propensity": open_propensity_v1,
    "send_time": send_time_v1,
    "next_best_offer": next_best_offer_v1,
}
