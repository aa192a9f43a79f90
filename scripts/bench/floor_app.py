"""The HTTP floor: a constant answer under the server stack `creditflow serve` runs.

`creditflow.serving.stack.run`, as `creditflow serve` runs (uvicorn on uvloop + httptools, its TCP_NODELAY listener,
the same number of workers, no access log), and an ASGI app that reads each POST body whole and answers it with one
fixed prediction (the JSON of a 1-row answer of our endpoint). No parsing, no model: what any Python endpoint on this
stack costs per request. GET /ping answers 200 as MLflow's does.

    .venv/bin/python scripts/bench/floor_app.py --port 5005 --workers 1
"""

from __future__ import annotations

import argparse
import sys

ANSWER = (b'{"predictions": [{"probability": 0.0144, "decision": "approve", "reason_codes": ["Monthly income", '
          b'"Number of dependents", "Debt ratio"], "reason_statements": ["Income insufficient for the credit '
          b'obligations", "Number of dependents", "Debt obligations too high compared with income"], '
          b'"model_version": "credit-default/1"}]}')
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    more = scope["method"] == "POST"
    while more:  # the whole body, as a scoring endpoint must read it
        message = await receive()
        more = message.get("more_body", False)
    body = ANSWER if scope["method"] == "POST" else b"\n"
    await send({"type": "http.response.start", "status": 200,
                "headers": HEADERS if body is ANSWER else [(b"content-length", b"1")]})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    from creditflow.serving.stack import listening_socket, run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("-w", "--workers", type=int, default=1)
    args = parser.parse_args()
    # "floor_app:app": this script's folder is sys.path[0] here and in the workers uvicorn spawns
    run("floor_app:app", listening_socket(args.host, args.port), args.workers, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
