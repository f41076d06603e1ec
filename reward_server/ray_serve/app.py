"""`build_app(args)`: the Serve application builder (import path
`reward_server.ray_serve.app:build_app`, used by `serve run` and deploy/ray-serve.yaml).

One `ingress` deployment (the HTTP API) and one `scorer_<name>` deployment per
model scorer, each with the replicas, CPUs/GPUs and batching its options give.
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from reward_server.ray_serve.ingress import RewardIngress
from reward_server.ray_serve.options import RayAppArgs, deployment_name
from reward_server.ray_serve.replica import ScorerReplica
from reward_server.scorers.registry import default_registry


def build_app(args: RayAppArgs) -> Application:
    """The application for these arguments (a dict is validated into RayAppArgs)."""
    if not isinstance(args, RayAppArgs):
        args = RayAppArgs.model_validate(args)
    registry = default_registry()
    names = args.scorer_names()
    local = [n for n in names if n in args.in_ingress or registry.needs_rating_store(n)]
    settings = {**args.settings, "scorers": names}
    scorer_settings = {k: v for k, v in settings.items() if k != "api_keys"}
    handles = {}
    for name in names:
        if name in local:
            continue
        opts = args.options_for(name)
        deployment = serve.deployment(ScorerReplica).options(
            **opts.deployment_options(deployment_name(name))
        )
        handles[name] = deployment.bind(
            name, scorer_settings, opts.max_batch_size, opts.batch_wait_timeout_s
        )
    ingress = serve.deployment(RewardIngress).options(
        name="ingress",
        num_replicas=args.ingress.num_replicas,
        max_ongoing_requests=args.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": args.ingress.num_cpus},
    )
    return ingress.bind(settings, local, handles, args.ingress)
