"""`lmrs serve ray [MODEL] --replicas R [--tp N] [serve flags]`: R engine replicas behind Ray Serve.

Takes every flag of `lmrs serve api_server` (each replica gets the same engine and server settings),
plus the replica count, the resources of one replica, and the Ray cluster to join. Without
--ray-address it starts a local Ray instance. Runs until SIGINT/SIGTERM, then shuts Serve and Ray
down (replicas drain within --shutdown-timeout).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def build_parser():
    from lmrs.serve import add_flag, build_parser as serve_parser

    p = serve_parser(prog="lmrs serve ray")
    p.description = ("Serve a chat model with R engine replicas behind Ray Serve: one HTTP endpoint, sessions "
                     "pinned to a replica by consistent hashing, stateless requests to the least busy replica.")
    add_flag(p, "replicas", type=int, default=2, help="engine replicas")
    add_flag(p, "num-cpus-per-replica", type=float, default=1.0, help="Ray CPUs reserved by each replica")
    add_flag(p, "num-gpus-per-replica", type=float, default=None,
             help="Ray GPUs reserved by each replica (default: --tp on --device cuda, else 0)")
    add_flag(p, "ray-address", default=None, help="the Ray cluster to join (default: start a local one)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from lmrs.logging_setup import setup_logging

    setup_logging(args.log_level, args.log_format)
    if args.replicas < 1:
        print("lmrs serve ray: --replicas must be at least 1", file=sys.stderr)
        return 2
    try:
        import ray
        from ray import serve
    except ImportError:
        print("lmrs serve ray: Ray Serve is not installed (pip install 'lmrs[ray]')", file=sys.stderr)
        return 2
    from lmrs.serve import checked_configs

    configs = checked_configs(args, "lmrs serve ray")  # before Ray starts: a missing model is a clear exit 2
    if configs is None:
        return 2
    engine_cfg, settings = configs
    if args.num_threads is None:  # a replica's torch threads: the CPUs Ray reserves for it
        engine_cfg.num_threads = max(1, int(args.num_cpus_per_replica))
    gpus = args.num_gpus_per_replica
    if gpus is None:
        gpus = float(args.tp) if args.device.startswith("cuda") else 0.0

    from lmrs.ray_serve.deployments import build_serve_app

    ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=True)
    stop = threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():  # a second signal: no more waiting
            print("lmrs serve ray: second signal, exiting now", file=sys.stderr, flush=True)
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        serve.start(http_options={"host": args.server_name, "port": args.server_port})
        serve.run(build_serve_app(engine_cfg, settings, replicas=args.replicas,
                                  num_cpus=args.num_cpus_per_replica, num_gpus=gpus),
                  name="lmrs", route_prefix="/", blocking=False)
        host = "127.0.0.1" if args.server_name in ("0.0.0.0", "") else args.server_name
        print(f"lmrs: {args.replicas} replicas of {settings.model_name} ready on http://{host}:{args.server_port} "
              "(Ray Serve)", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        _shut_down(serve, ray, settings.shutdown_timeout + 30)
    return 0


def _shut_down(serve, ray, timeout_s: float) -> None:
    """serve.shutdown() (replicas drain) then ray.shutdown(); if Serve hangs (say a Ray process was
    killed under it), stop Ray anyway after timeout_s."""
    done = threading.Event()

    def drain():
        try:
            serve.shutdown()
        except Exception as e:  # noqa: BLE001 - Ray is stopped below either way
            print(f"lmrs serve ray: serve.shutdown failed: {e}", file=sys.stderr, flush=True)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    if not done.wait(timeout_s):
        print(f"lmrs serve ray: Serve did not shut down within {timeout_s:.0f} s; stopping Ray", file=sys.stderr,
              flush=True)
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
