"""``python -m serving``: run the API with uvicorn (``encore serve`` execs this)."""

from __future__ import annotations

import argparse
import os
import sys

# Pin BLAS threads before numpy is imported by the app (per worker process).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="encore serve", description="Serve the published model.")
    p.add_argument("--models-dir", default=None, help="artifact store (default: models)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        print("encore serve: error: --port must be between 1 and 65535", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("encore serve: error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.models_dir:
        os.environ["ENCORE_MODELS_DIR"] = args.models_dir
    import uvicorn
    from pydantic import ValidationError

    from serving.settings import ServingSettings

    try:
        settings = ServingSettings()  # checked here, before the server starts
    except ValidationError as exc:
        for err in exc.errors():
            name = "ENCORE_" + "_".join(str(part) for part in err["loc"]).upper()
            print(f"encore serve: error: {name}: {err['msg']}", file=sys.stderr)
        return 2
    print(
        f"Encore is serving {settings.models_dir}/ on http://{args.host}:{args.port}/ "
        f"(API docs: http://{args.host}:{args.port}/docs)",
        flush=True,
    )
    config = uvicorn.Config(
        "serving.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    if args.workers == 1:
        uvicorn.Server(config).run()
        return 0
    from uvicorn.supervisors import Multiprocess

    from serving.workers import SpreadWorkers, bind_sockets, spreads_connections

    if spreads_connections():
        # one socket per worker, so that connections are spread over the workers
        # rather than taken in bursts by whichever wakes first (serving/workers.py)
        SpreadWorkers(config, bind_sockets(args.host, args.port, args.workers)).run()
        return 0
    import socket

    # uvicorn binds the workers' shared listener with proto 0, so accepted
    # connections never get TCP_NODELAY and a keep-alive response waits ~40 ms
    # for the client's delayed ACK between headers and body (Kludex/uvicorn#3149).
    # The same socket re-read from its descriptor reports IPPROTO_TCP.
    sock = config.bind_socket()
    sock = socket.socket(fileno=sock.detach())
    Multiprocess(config, sockets=[sock]).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
