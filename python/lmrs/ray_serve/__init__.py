"""Replicas behind Ray Serve (`lmrs serve ray`): session affinity by consistent hashing, least in flight
for stateless requests. Only `deployments`, `request_router` and `serve_ray` import Ray."""
