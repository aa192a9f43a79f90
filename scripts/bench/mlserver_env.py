"""MLServer (`mlserver` + `mlserver-mlflow` 1.7.1) serving a registered model, for scripts/bench/serving.py.

They do not fit the project's pins (mlserver 1.7.1 wants fastapi < 0.116), so they live in a virtualenv of their
own, `~/.cache/creditflow-bench/mlserver-1.7.1`, made on first use with this interpreter's Python and pip: MLServer,
its MLflow runtime and the model's own `requirements.txt` (the same mlflow, scikit-learn, xgboost, pandas... as the
project), plus uvloop 0.21 (uvloop 0.22 and later raise in MLServer 1.7.1's inference workers: "There is no current
event loop"). The model is served from its downloaded directory over MLServer's REST API, the V2 inference protocol
(`POST /v2/models/credit-default/infer`, the columns as a pandas frame: content type `pd`), with
`parallel_workers` set to the workers of the other endpoints (MLServer then runs one HTTP process and that many
inference processes).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

VERSION = "1.7.1"
PACKAGES = [f"mlserver=={VERSION}", f"mlserver-mlflow=={VERSION}", "uvloop==0.21.0"]
HOME = Path.home() / ".cache" / "creditflow-bench" / f"mlserver-{VERSION}"
MODEL = "credit-default"
PATH = f"/v2/models/{MODEL}/infer"


def environment(requirements: Path, log) -> Path | None:
    """MLServer's virtualenv with the model's requirements (installed once); None, said in one line, if it cannot be."""
    wanted = sorted({*PACKAGES, *(line.strip() for line in requirements.read_text().splitlines() if line.strip())})
    marker = HOME / ".creditflow-installed"
    if marker.exists() and marker.read_text().splitlines() == wanted:
        return HOME
    log(f"installing MLServer {VERSION} and the model's requirements into {HOME} (once; a few minutes)")
    try:
        if not (HOME / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(HOME)], check=True, capture_output=True, text=True)
        subprocess.run([str(HOME / "bin" / "python"), "-m", "pip", "install", "-q", *wanted], check=True,
                       capture_output=True, text=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        lines = [ln for ln in detail.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        log(f"MLServer cannot be installed here ({lines[-1] if lines else exc}): its rows are left out")
        return None
    marker.write_text("\n".join(wanted) + "\n")
    return HOME


def command(env: Path, model_dir: Path, work: Path, ports: tuple[int, int, int], workers: int) -> list[str]:
    """`mlserver start` of a settings directory under `work` serving `model_dir` (HTTP, gRPC, metrics ports)."""
    work.mkdir(parents=True, exist_ok=True)
    http, grpc, metrics = ports
    (work / "settings.json").write_text(json.dumps({
        "http_port": http, "grpc_port": grpc, "metrics_port": metrics, "parallel_workers": workers,
        "host": "127.0.0.1", "debug": False}))
    (work / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_mlflow.MLflowRuntime", "parameters": {"uri": str(model_dir)}}))
    return [str(env / "bin" / "mlserver"), "start", str(work)]


def body(frame) -> str:
    """A V2 inference request of `frame`'s rows: one input per column, numbers FP64 (missing: null), text BYTES."""
    inputs = []
    for column in frame.columns:
        values = frame[column].tolist()
        numeric = frame[column].dtype.kind == "f"
        data = [None if v is None or (numeric and math.isnan(v)) else v for v in values]
        inputs.append({"name": column, "shape": [len(values)], "datatype": "FP64" if numeric else "BYTES",
                       "data": data})
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs})


def probabilities(answer: dict) -> list[float]:
    """The probability column of a V2 answer."""
    output = next(o for o in answer["outputs"] if o["name"] == "probability")
    return [float(p) for p in output["data"]]
