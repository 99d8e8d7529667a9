"""SessionAffinityRouter: Ray Serve's request router for the engine deployment (runs in the caller,
the ingress, inside its DeploymentHandle).

Every call to an engine replica carries a RouteKey as its first argument (see route_key.py):
- `session`: the owner on a consistent-hash ring over the running replicas' ids, and only it (if its
  queue is full the call waits, with Serve's backoff, rather than lose the session's KV cache);
- `replica`: that replica when it runs, else any (the replica then answers 404 for what it lacks);
- stateless: Serve's own choice of the lowest queue length (requests in flight on the replica) among
  all replicas; the replica that last served the same prompt prefix goes first when its queue is at
  most PREFIX_SLACK longer than the shortest one known.
The routers alive in this process are kept in ROUTERS so the ingress can fan /metrics and /health out
to every replica by name.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from lmrs.ray_serve.hash_ring import HashRing
from lmrs.ray_serve.route_key import RouteKey

#: A prefix's last replica is preferred while its queue is at most this much longer than the shortest.
PREFIX_SLACK = 2
#: Prompt prefixes remembered (least recently used dropped first).
PREFIX_MEMORY = 4096

#: deployment name -> the router routing to it in this process (the ingress reads replica names here).
ROUTERS: dict[str, "SessionAffinityRouter"] = {}


def replica_name(replica_id: ReplicaID) -> str:
    """The name a replica goes by everywhere: ring member, x-lmrs-replica header, metrics label."""
    return replica_id.unique_id


class SessionAffinityRouter(RequestRouter):
    def initialize_state(self, **kwargs):
        self.ring = HashRing()
        self.prefix_owner: OrderedDict[str, str] = OrderedDict()
        # Serve may load this class by value (cloudpickle), with a copy of this module's globals: reach
        # the registry through the imported module, which the ingress shares.
        import lmrs.ray_serve.request_router as registry

        registry.ROUTERS[self._deployment_id.name] = self

    def replica_names(self) -> list[str]:
        return sorted(replica_name(r) for r in self.curr_replicas)

    def _queue_len(self, replica: RunningReplica) -> int | None:
        return self.replica_queue_len_cache.get(replica.replica_id)

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        by_name = {replica_name(r.replica_id): r for r in candidate_replicas}
        if not by_name:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # retries wait, never spin
        key = _route_key(pending_request)
        if key.session is not None:
            if self.ring.members != by_name.keys():
                self.ring.set_members(by_name)
            return [[by_name[self.ring.owner(key.session)]]]
        if key.replica is not None and key.replica in by_name:
            return [[by_name[key.replica]]]
        everyone = list(by_name.values())
        owner = by_name.get(self.prefix_owner.get(key.prefix, "")) if key.prefix else None
        if owner is not None:
            known = [q for q in (self._queue_len(r) for r in everyone) if q is not None]
            mine = self._queue_len(owner)
            if mine is None or not known or mine <= min(known) + PREFIX_SLACK:
                return [[owner], [r for r in everyone if r is not owner]]
        return [everyone]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        key = _route_key(pending_request)
        if key.stateless and key.prefix:
            self.prefix_owner[key.prefix] = replica_name(replica_id)
            self.prefix_owner.move_to_end(key.prefix)
            while len(self.prefix_owner) > PREFIX_MEMORY:
                self.prefix_owner.popitem(last=False)


def _route_key(pending_request: Optional[PendingRequest]) -> RouteKey:
    """The call's RouteKey (matched by type name: a by-value copy of this module has its own class)."""
    if pending_request is not None and pending_request.args and type(pending_request.args[0]).__name__ == "RouteKey":
        return pending_request.args[0]
    return RouteKey()
