"""``python -m flows.serve``: serve IDU's deployments from this process (a Prefect runner).

Started by ``idu serve``; on many machines use workers and deploy/prefect.yaml instead.
"""

from __future__ import annotations

from prefect import serve

from flows.deployments import served_deployments

if __name__ == "__main__":
    serve(*served_deployments(), limit=2, print_starting_message=False)
