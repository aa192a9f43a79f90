"""The promotion lease: one promotion of a model at a time, though MLflow has no locks.

The lease is a compare-and-set on what the store does make atomic: a run parameter cannot change
once logged. Each promotion of a model logs `lease.<model>.<n+1>` with a unique token on one lease
run in `model-promotions`; of two racing processes exactly one write succeeds. A lease lapses after
`lease_seconds`, or at once when its process is gone from this host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from creditflow.errors import CreditflowError, TrackingError, first_line
from creditflow.registry.audit import TAG, audit_experiment
from creditflow.registry.client import when
from creditflow.registry.policy import PromotionPolicy

logger = logging.getLogger(__name__)

Step = Callable[[str], None]  # called before the lease and after each registry write: the hook for fault tests


def no_step(name: str) -> None:
    """Default step hook: nothing."""


class PromotionBusy(CreditflowError):
    """Another promotion of the same model holds the lease (a refusal: exit 3, nothing changed)."""

    exit_code = 3



# ---------------------------------------------------------------- the lease (compare-and-set on a run param)


@dataclass(frozen=True)
class Lease:
    run_id: str
    name: str
    epoch: int
    token: str
    expires: float


def _safe(name: str) -> str:
    """A model name as a param key part (MLflow keys allow letters, digits, _ - . / and space)."""
    safe = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)
    return safe if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _lease_key(name: str, epoch: int, kind: str = "lease") -> str:
    return f"{kind}.{_safe(name)}.{epoch:06d}"


def _lease_run(client: MlflowClient, settle: float = 1.0) -> str:
    """The one run whose params hold every lease: the earliest such run (created once, then found)."""
    exp_id = audit_experiment(client)
    query = f"tags.`{TAG}kind` = 'lease'"
    runs = client.search_runs([exp_id], query, max_results=50)
    if not runs:
        created = client.create_run(exp_id, run_name="promotion-leases", tags={
            f"{TAG}kind": "lease",
            "mlflow.note.content": "Promotion leases: each promotion logs lease.<model>.<n> (a param cannot "
                                   "change, so exactly one of two racing promotions gets epoch n).",
        })
        client.set_terminated(created.info.run_id)
        time.sleep(settle)  # let a concurrent first creator's run become visible, then all pick the same
        runs = client.search_runs([exp_id], query, max_results=50)
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id


def _epoch(params: dict[str, str], name: str) -> int:
    prefix = f"lease.{_safe(name)}."
    return max((int(k[len(prefix):]) for k in params if k.startswith(prefix)), default=0)


def _holder_alive(holder: dict) -> bool:
    """A lease counts until it expires, or until its process is gone (same host only)."""
    if time.time() > float(holder.get("expires", 0)):
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, KeyError):
            return True
    return True


def acquire_lease(client: MlflowClient, name: str, policy: PromotionPolicy, purpose: str) -> Lease:
    """Take the model's promotion lease, or raise PromotionBusy: a compare-and-set on lease.<model>.<n+1>."""
    run_id = _lease_run(client)
    params = client.get_run(run_id).data.params
    epoch = _epoch(params, name)
    if epoch and _lease_key(name, epoch, "release") not in params:
        holder = json.loads(params[_lease_key(name, epoch)])
        if _holder_alive(holder):
            raise PromotionBusy(
                f"another promotion of '{name}' is in progress ({holder.get('purpose')}, pid {holder.get('pid')} "
                f"on {holder.get('host')} since {when(holder.get('since', 0))}); nothing changed, try again later")
    token = uuid.uuid4().hex
    now = time.time()
    mine = json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(), "since": now,
                       "expires": now + policy.lease_seconds, "purpose": purpose})
    key = _lease_key(name, epoch + 1)
    failure: MlflowException | None = None
    try:
        client.log_param(run_id, key, mine)
    except MlflowException as exc:  # "changing param values is not allowed": someone else took this epoch
        failure = exc
    taken = client.get_run(run_id).data.params.get(key)
    if taken is None and failure is not None:
        raise TrackingError(f"could not take the promotion lease: {first_line(failure)}")
    if taken != mine:
        other = json.loads(taken or "{}")
        raise PromotionBusy(f"another promotion of '{name}' ({other.get('purpose')}, pid {other.get('pid')}) "
                            "started at the same moment and won the lease; nothing changed")
    return Lease(run_id, name, epoch + 1, token, now + policy.lease_seconds)


def lease_still_held(client: MlflowClient, lease: Lease) -> bool:
    """Nobody took a later epoch (possible only after our lease expired) and it has not expired."""
    params = client.get_run(lease.run_id).data.params
    return _lease_key(lease.name, lease.epoch + 1) not in params and time.time() < lease.expires


def release_lease(client: MlflowClient, lease: Lease) -> None:
    try:
        client.log_param(lease.run_id, _lease_key(lease.name, lease.epoch, "release"), lease.token)
    except MlflowException as exc:  # the lease then lapses when it expires or its process is gone
        logger.warning("warning: could not release the promotion lease: %s", first_line(exc))


def lease_is_free(client: MlflowClient, name: str) -> bool:
    """No live promotion holds the model's lease (for tests and `registry history`)."""
    params = client.get_run(_lease_run(client)).data.params
    epoch = _epoch(params, name)
    return not epoch or _lease_key(name, epoch, "release") in params or \
        not _holder_alive(json.loads(params[_lease_key(name, epoch)]))


@contextmanager
def leased(client: MlflowClient, name: str, policy: PromotionPolicy, purpose: str, on_step: Step) -> Iterator[Lease]:
    on_step("acquiring")
    lease = acquire_lease(client, name, policy, purpose)
    try:
        on_step("lease")
        yield lease
    finally:
        release_lease(client, lease)
        on_step("released")


