"""Real data through the real pipeline: the Hillstrom email experiment and the Starbucks offer data.

Each report writes its dataset in the data contract (`sendwise.adapters`), ingests it and builds the feature
tables and Feast's registry with the jobs of `sendwise pipeline` (`training.jobs`), and takes the offer model's
training set through the `next_best_offer_v1` FeatureService (`offer_training_set`), exactly as training does.
Then, on a random half of the customers, it fits the offer model with `fit_binary`; on the other half it scores
every offer for every logged decision (Feast rows at the decision time, `customer_matrix` and `offer_design`,
as the engine does) and evaluates policies off-policy from the logged propensities (`training.offpolicy`).
What the pipeline cannot express is trained here, on the same design matrices, and said so in each dataset's
module.

Policies rank offers as the engine does: by expected value (probability × margin), over the control arm's
where the data has one, so the control arm ("send nothing") wins when nothing adds value.

- `harness`: the pipeline run, splits, scoring every offer, policy values and intervals, formatting.
- `hillstrom`, `starbucks`: each dataset's report and its tables.
- `plain_export`: Hillstrom as a plain export through `sendwise pipeline --as-of`, then decided through the
  engine of `/v1/decide` for customers the home never saw.
"""
