"""Fixtures for the pipeline tests, which run the sbatch scripts on a real SLURM cluster."""

import pytest

from tests.pipeline.slurm_cluster import ClusterUnavailable, ensure_cluster


@pytest.fixture(scope="session")
def slurm_cluster():
    """A cluster answering sbatch/squeue/scontrol: the running one, or a local one-node
    cluster started for this session (and stopped after it). Skips when neither is possible."""
    try:
        cluster = ensure_cluster()
    except ClusterUnavailable as e:
        pytest.skip(f"no SLURM cluster: {e.reason}")
    yield cluster
    if cluster.started:
        cluster.stop()
