"""The Ray Serve application's arguments, validated where `serve run`/`serve deploy` read them.

Serve passes the `args:` of a config file (or `serve run ... key=value`) to the
application builder; this model is what it accepts. Replica counts, CPUs and
GPUs set here are the defaults of each deployment; a config file's own
`deployments:` section overrides them as for any Serve application.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Served inside the ingress by default: cheap per image, not worth a hop to another process.
LIGHT_SCORERS = ("jpeg_compressibility", "jpeg_incompressibility")


class ScorerDeploymentOptions(BaseModel):
    """One model scorer's deployment: its replicas, their resources, its batching."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(1, ge=1, description="Fixed count; None: autoscale.")
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(1, ge=1, description="Autoscaling upper bound.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Per replica, for autoscaling.")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests one replica takes at once.")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="1 (or a fraction) per replica on GPU hosts.")
    max_batch_size: int | None = Field(
        None, ge=1, description="Images per device batch; None: the scorer's own default."
    )
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="How long a batch waits to fill.")

    @model_validator(mode="after")
    def _bounds(self) -> ScorerDeploymentOptions:
        if self.num_replicas is None and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def deployment_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options` (scaling and resources)."""
        options: dict[str, Any] = {
            "name": name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
        }
        if self.num_replicas is not None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return options


class IngressOptions(BaseModel):
    """The ingress deployment (HTTP, validation, auth, light scorers)."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    #: Attempts per request on another replica when a scorer replica dies or is unreachable.
    replica_retries: int = Field(3, ge=0)


class RayAppArgs(BaseModel):
    """`args:` of the Serve application (see deploy/ray-serve.yaml)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="ServerSettings fields (DDPO_* without the prefix); the environment "
        "(runtime_env env_vars) fills the rest. `scorers` must be named.",
    )
    in_ingress: list[str] = Field(
        default_factory=lambda: list(LIGHT_SCORERS),
        description="Scorers run inside the ingress replica; rating scorers always are.",
    )
    ingress: IngressOptions = Field(default_factory=IngressOptions)
    default_deployment: ScorerDeploymentOptions = Field(default_factory=ScorerDeploymentOptions)
    deployments: dict[str, ScorerDeploymentOptions] = Field(
        default_factory=dict, description="Per scorer name, in place of default_deployment."
    )

    @model_validator(mode="after")
    def _scorers_named(self) -> RayAppArgs:
        scorers = self.settings.get("scorers")
        if not scorers:
            raise ValueError(
                "settings.scorers must name the scorers: each model scorer gets a deployment"
            )
        unknown = sorted(set(self.deployments) - set(self.scorer_names()))
        if unknown:
            raise ValueError(f"deployments for scorers not served: {', '.join(unknown)}")
        return self

    def scorer_names(self) -> list[str]:
        scorers = self.settings["scorers"]
        names = scorers.split(",") if isinstance(scorers, str) else list(scorers)
        return list(dict.fromkeys(n.strip() for n in names if n.strip()))

    def options_for(self, scorer: str) -> ScorerDeploymentOptions:
        return self.deployments.get(scorer, self.default_deployment)


def deployment_name(scorer: str) -> str:
    """The Serve deployment that serves `scorer` (what a config's `deployments:` names)."""
    return f"scorer_{scorer}"
