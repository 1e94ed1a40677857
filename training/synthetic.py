"""Synthetic listening sessions with learnable sequence and skip structure (demo data).

``skiprec synth`` (``training/cli/synth.py``) writes them as the generic event log
(``user_id,track_id,event,timestamp``) that ``training.data.load_sessions`` reads back
into the same sessions.

The generative story, chosen so that each signal a model can use is present:
- Tracks belong to latent taste clusters placed on a ring (neighbouring clusters are
  similar). Within a cluster, popularity is Zipf-like, and the tracks have a fixed
  "playlist" order.
- A session has a current taste cluster that drifts to a neighbour now and then.
- The next track usually follows the taste: the playlist successor of the last track
  when that track is on-taste, else a popular track of the taste cluster; otherwise
  it is off-taste noise from a random cluster.
- The skip probability rises with the ring distance between the track's cluster and
  the current taste, so a skip says "this track is not what the listener wants":
  a skip-aware model can discount it, a skip-blind one follows it.
Sessions of one user are hours apart, so the ``events`` loader's 30-minute inactivity
split recovers them with the same ``user#n`` ids.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from training.data import Session


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generative story; the defaults give a clearly learnable log."""

    num_sessions: int = 5000
    num_tracks: int = 2000
    num_clusters: int = 40
    min_length: int = 8
    max_length: int = 30
    sessions_per_user: float = 3.0  # mean; users get 1..2*mean-1 sessions
    zipf_exponent: float = 1.1  # within-cluster popularity ~ 1 / rank**exponent
    drift_prob: float = 0.12  # per event: taste moves to a neighbouring cluster
    sequel_prob: float = 0.4  # on-taste last track -> its playlist successor
    on_taste_prob: float = 0.65  # otherwise: a track of the taste cluster, else noise
    skip_prob_by_distance: tuple[float, ...] = (0.15, 0.5, 0.8, 0.92)
    start_time: float = 1_700_000_000.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_clusters < 1 or self.num_tracks < self.num_clusters:
            raise ValueError("need 1 <= num_clusters <= num_tracks")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError("need 1 <= min_length <= max_length")
        if self.num_sessions < 0 or self.sessions_per_user < 1:
            raise ValueError("need num_sessions >= 0 and sessions_per_user >= 1")


def generate_sessions(
    num_sessions: int = 5000,
    num_tracks: int = 2000,
    num_clusters: int = 40,
    seed: int = 0,
    config: SyntheticConfig | None = None,
) -> list[Session]:
    """Deterministic per seed; sessions grouped by user, ids ``u<user>#<n>``.

    ``config`` overrides the other arguments when given.
    """
    cfg = config or SyntheticConfig(
        num_sessions=num_sessions,
        num_tracks=num_tracks,
        num_clusters=num_clusters,
        seed=seed,
    )
    rng = np.random.default_rng(cfg.seed)
    num_c = cfg.num_clusters

    # Clusters of (nearly) equal size; members listed in popularity = playlist order.
    cluster_of = (rng.permutation(cfg.num_tracks) % num_c).tolist()
    members: list[list[int]] = [[] for _ in range(num_c)]
    for track, cluster in enumerate(cluster_of):
        members[cluster].append(track)
    rank_of = [0] * cfg.num_tracks
    cdfs: list[list[float]] = []
    for playlist in members:
        for rank, track in enumerate(playlist):
            rank_of[track] = rank
        weights = 1.0 / np.arange(1, len(playlist) + 1) ** cfg.zipf_exponent
        cdfs.append((np.cumsum(weights) / weights.sum()).tolist())
    cluster_weights = 1.0 / np.arange(1, num_c + 1) ** 0.5
    start_cdf = (np.cumsum(cluster_weights) / cluster_weights.sum()).tolist()
    skip_probs = cfg.skip_prob_by_distance
    track_names = [f"t{i}" for i in range(cfg.num_tracks)]

    def draw(cdf: list[float], u: float) -> int:
        return min(bisect.bisect_right(cdf, u), len(cdf) - 1)

    lengths = rng.integers(cfg.min_length, cfg.max_length + 1, cfg.num_sessions)
    uniforms = iter(rng.random(int(lengths.sum()) * 5 + cfg.num_sessions).tolist())
    durations = iter(rng.integers(120, 300, int(lengths.sum())).tolist())
    skip_durations = iter(rng.integers(3, 30, int(lengths.sum())).tolist())

    num_users = max(1, round(cfg.num_sessions / cfg.sessions_per_user))
    user_of = rng.integers(0, num_users, cfg.num_sessions)
    # Each user's sessions are 2..26 hours apart: far beyond the 30-min session gap.
    user_clock = (cfg.start_time + rng.integers(0, 86_400, num_users)).tolist()
    session_hours = rng.integers(2, 27, cfg.num_sessions).tolist()

    per_user: dict[int, list[Session]] = {}
    for index in range(cfg.num_sessions):
        user = int(user_of[index])
        clock = user_clock[user]
        taste = draw(start_cdf, next(uniforms))
        tracks: list[str] = []
        skips: list[bool] = []
        times: list[float] = []
        previous = -1
        for step in range(int(lengths[index])):
            u_drift, u_kind, u_cluster, u_track, u_skip = (
                next(uniforms) for _ in range(5)
            )
            if step and u_drift < cfg.drift_prob:
                taste = (taste + (1 if u_drift < cfg.drift_prob / 2 else -1)) % num_c
            if (
                previous >= 0
                and cluster_of[previous] == taste
                and u_kind < cfg.sequel_prob
            ):
                playlist = members[taste]
                track = playlist[(rank_of[previous] + 1) % len(playlist)]
            elif u_kind < cfg.sequel_prob + (1 - cfg.sequel_prob) * cfg.on_taste_prob:
                track = members[taste][draw(cdfs[taste], u_track)]
            else:
                noise = min(int(u_cluster * num_c), num_c - 1)
                track = members[noise][draw(cdfs[noise], u_track)]
            gap = abs(cluster_of[track] - taste)
            distance = min(gap, num_c - gap, len(skip_probs) - 1)
            skipped = u_skip < skip_probs[distance]
            tracks.append(track_names[track])
            skips.append(skipped)
            times.append(float(clock))
            clock += next(skip_durations) if skipped else next(durations)
            previous = track
        user_clock[user] = clock + 3600 * session_hours[index]
        sessions = per_user.setdefault(user, [])
        sessions.append(
            Session(
                f"u{user}#{len(sessions)}", tuple(tracks), tuple(skips), tuple(times)
            )
        )
    return [session for user in sorted(per_user) for session in per_user[user]]
