"""Live pairwise preferences fed to the learner directly (`pair_score = "win_rate"`).

In each rated pair the preferred image is positive and the other negative: the
server reports each item's wins, the client takes the win share, and the
advantage Z (2 w - 1) makes NFT's optimality probability r the win share itself,
with no fitted reward in between.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from shared.protocol import JobStatus
from tests.test_ppo import _config as minimal_config
from tests.test_rating_jobs import API, job_body, make_app, rate_next, sqlite_store  # noqa: F401
from trainer.advantages import RewardStatTrackers, epoch_advantages_by_reward, preference_advantages
from trainer.algorithms.forward_losses import optimality_probability
from trainer.config import RewardEndpoint, TrainConfig
from trainer.reward_client.errors import RewardError
from trainer.reward_client.jobs import job_scores

Z = 5.0


def status(scores, num_ratings, wins) -> JobStatus:
    return JobStatus(
        job_id="j", scorer="human_pairwise", version="1", status="done", scores=scores,
        num_ratings=num_ratings, wins=wins, ratings_per_item=1, deadline=0.0,
    )  # fmt: skip


def test_server_reports_each_items_wins(sqlite_store) -> None:  # noqa: F811
    _, token = sqlite_store.add_rater("alice")
    with TestClient(make_app(sqlite_store)) as client:
        body = job_body(3, "human_pairwise", prompts=["cat", "cat", "dog"])
        job = client.post("/v1/jobs", json=body, headers=API).json()
        task = rate_next(client, token)  # picks A
        assert task is not None and task["mode"] == "pair"
        got = client.get(f"/v1/jobs/{job['job_id']}", headers=API).json()
        assert got["num_ratings"] == [1, 1, 0]
        assert sorted(got["wins"][:2]) == [0, 1] and got["wins"][2] == 0
        scored = client.post("/v1/jobs", json=job_body(1), headers=API).json()
        assert client.get(f"/v1/jobs/{scored['job_id']}", headers=API).json()["wins"] is None


def test_client_takes_the_win_share_or_the_strength() -> None:
    done = status([0.7, -0.7, None, 0.1], [2, 2, 0, 3], [2, 0, 0, 1])
    win = RewardEndpoint(url="http://x", scorer="human_pairwise", pair_score="win_rate")
    got = job_scores(win, done)
    assert got[:2].tolist() == [1.0, 0.0] and np.isnan(got[2]) and got[3] == pytest.approx(1 / 3)
    strength = job_scores(RewardEndpoint(url="http://x", scorer="human_pairwise"), done)
    assert strength[[0, 1, 3]].tolist() == [0.7, -0.7, 0.1]
    with pytest.raises(RewardError, match="human_pairwise"):
        job_scores(win, status([5.0], [1], None))


def test_preferred_image_is_wholly_positive_for_nft() -> None:
    w = np.array([1.0, 0.0, 0.5, 2 / 3, np.nan])
    adv = preference_advantages(w, Z)
    assert adv.tolist() == pytest.approx([Z, -Z, 0.0, Z / 3, 0.0])
    r = optimality_probability(torch.as_tensor(adv), Z)
    assert r[:4].tolist() == pytest.approx(w[:4].tolist())  # r is the win share itself
    assert r[4] == 0.5  # never compared: no pull either way


def test_epoch_advantages_skip_statistics_for_preferences() -> None:
    pairs = RewardEndpoint(url="http://x", scorer="human_pairwise", pair_score="win_rate")
    cfg = minimal_config(rewards=[pairs], train_adv_clip_max=Z, sample_group_size=2)
    tracker = RewardStatTrackers(16, 2)
    w = np.array([1.0, 0.0, 0.0, 1.0])
    groups = np.array([0, 0, 1, 1])
    adv, _ = epoch_advantages_by_reward(cfg, tracker, ["a"] * 4, w, {"human_pairwise": w}, groups)
    assert adv.tolist() == [Z, -Z, -Z, Z]  # group-normalising would have given +-1

    jpeg = RewardEndpoint(url="http://x", scorer="jpeg_compressibility", weight=0.5)
    both = minimal_config(
        rewards=[pairs, jpeg], reward_aggregation="advantages", train_adv_clip_max=Z,
        sample_group_size=2,
    )  # fmt: skip
    j = np.array([1.0, 3.0, 2.0, 2.0])
    adv, each = epoch_advantages_by_reward(
        both, tracker, ["a"] * 4, w + j, {"human_pairwise": w, "jpeg_compressibility": j}, groups
    )
    assert each["human_pairwise"].tolist() == [Z, -Z, -Z, Z]
    assert adv.tolist() == pytest.approx(
        (each["human_pairwise"] + 0.5 * each["jpeg_compressibility"]).tolist()
    )


def test_config_keeps_preferences_out_of_summed_rewards() -> None:
    pairs = RewardEndpoint(url="http://x", scorer="human_pairwise", pair_score="win_rate")
    jpeg = RewardEndpoint(url="http://x", scorer="jpeg_compressibility")
    with pytest.raises(ValidationError, match="reward_aggregation = 'advantages'"):
        minimal_config(rewards=[pairs, jpeg])
    assert isinstance(
        minimal_config(rewards=[pairs, jpeg], reward_aggregation="advantages"), TrainConfig
    )
    with pytest.raises(ValidationError, match="missing = 'drop'"):
        RewardEndpoint(url="http://x", scorer="human_pairwise", pair_score="win_rate",
                       missing="fallback", fallback_scorer="jpeg_compressibility")  # fmt: skip


@pytest.mark.slow
def test_nft_learns_from_a_raters_pairs_directly(tmp_path: Path, tiny_sd: Path) -> None:
    """`ddpo train` with NFT on live pairwise ratings: every sample is in one rated pair,
    so r is exactly 1 or 0 (|r - 1/2| = 1/2); through a fitted, normalised reward it
    would be 1/2 +- A / 2Z, far from the ends."""
    from ddpo.server_process import RewardServerProcess
    from reward_server.invites import invite_rater
    from reward_server.scripted_rater import ScriptedRater
    from tests.test_train_e2e import ddpo
    from trainer.run_log import read_metrics

    data = tmp_path / "ratings"
    data.mkdir()
    env = {"DDPO_DATA_DIR": str(data), "DDPO_RATINGS_PER_ITEM": "1"}
    with RewardServerProcess(["human_pairwise"], extra_env=env) as server:
        invite = invite_rater(f"sqlite:///{data / 'ratings.db'}", "bot", server.url)
        rater = ScriptedRater(invite, "red", idle_sleep_s=0.05, mode="pair").start()
        config = tmp_path / "config.toml"
        config.write_text(
            f'pretrained_model = "{tiny_sd}"\noutput_dir = "{tmp_path / "out"}"\n'
            'prompts = ["a red circle", "a blue square"]\nmixed_precision = "no"\n'
            "resolution = 32\nsample_num_steps = 4\nsample_batch_size = 4\n"
            "sample_num_batches_per_epoch = 1\nsample_group_size = 2\ntrain_batch_size = 4\n"
            'num_epochs = 2\ntrain_algorithm = "nft"\nreward_epoch_deadline_s = 120\n'
            f'[[rewards]]\nurl = "{server.url}"\nscorer = "human_pairwise"\n'
            'pair_score = "win_rate"\nmissing = "drop"\n'
        )
        try:
            ddpo("train", "--config", str(config))
        finally:
            rater.stop()
    epochs = read_metrics(tmp_path / "out")
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:
        assert e["num_rated"] == 4 and e["num_dropped"] == 0, e
        assert e["r_abs_dev_mean"] == pytest.approx(0.5), e
        assert e["r_mean"] == pytest.approx(0.5), e  # one winner, one loser per pair
