"""Fitting a reward head on people's ratings (the learning step of RLHF).

Every distinct rated image is embedded once with a frozen CLIP model; an MLP
(head_store.RewardHead) is then trained on the embeddings:

- score mode (1-10 ratings): regression on each image's mean rating,
  standardised, each image weighted by its number of ratings (the same optimum
  as a per-rating squared error);
- pair mode (A/B choices): Bradley-Terry, loss = -log sigmoid(r(winner) - r(loser)).

A random share of images (score) or of compared pairs (pair) is held out and
never used for any choice; the reported held-out figures describe the saved
head. The number of epochs is picked by early stopping on a further split of
the training part, after which the head is retrained on the whole training
part for that many epochs. Everything is seeded: the same ratings, CLIP model
and options give the same head on CPU.

Modules, in the order a fit runs: `ratings` (rows -> one mode's ratings),
`embedding` (images -> CLIP rows), `modes` (score regression, pair
Bradley-Terry, each with its held-out metrics from `metrics`), `training`
(the shared early-stopping loop), `pipeline` (all of it, saved as a version).
None imports fastapi or the database layer: ratings are read through anything
with RatingStore's `export_rows` and `image_for`. `ddpo fit-reward`'s glue is
reward_server/fit_reward.py.
"""
