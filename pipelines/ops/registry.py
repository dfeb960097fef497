"""The registered model's `champion` alias: promotion that never picks a worse model, explicit
promotion, rollback and history.

    python -m pipelines.ops.registry history  [--model NAME]
    python -m pipelines.ops.registry promote VERSION [--reason TEXT] [--model NAME]
    python -m pipelines.ops.registry rollback [--reason TEXT] [--model NAME]

The model name defaults to params.yaml `register.model_name`; the store is the project's (see
pipelines/tracking.py) or MLFLOW_TRACKING_URI.

Every change of the champion (the register stage's automatic promotion, `promote`, `rollback`)
is made under one exclusive inter-process lock: read the champion, decide, set the alias, then
re-read the alias to confirm it. The lock file sits beside a sqlite store (`mlflow.db.lock`) or,
for any other store, in the project (`.mlflow-registry.lock`); it exists only while held. It
serialises the processes that share that file system, which is what a file lock can do: writers
on other machines against a shared tracking server are not covered.

The automatic rule: promote only over no champion at all, or over a champion evaluated on the
same eval set (`eval_set_md5`, which covers the held-out ids, the bytes of their images and
labels, and the eval settings) whose `eval_<metric>` tag the candidate beats by at least
`register.min_improvement`. A champion without that tag (the metric was switched) is never
replaced automatically.

History lives in the registry, as tags: on each version `previous_champion` (the champion it
replaced when it was last promoted, "" for none) and `champion_events` (a JSON list of the
champion events it took part in), and on the registered model `champion_seq` (the number of the
latest event). `rollback` undoes the latest promotion: the champion goes back to its
`previous_champion`; repeated rollbacks walk back the chain of promotions.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from deeplab_core.data.io import PicklableErrorMixin
from pipelines.common import REPO, StageError

CHALLENGER, CHAMPION = "challenger", "champion"
EVAL_SET_TAG = "eval_set_md5"
PREVIOUS_TAG = "previous_champion"
EVENTS_TAG = "champion_events"
SEQ_TAG = "champion_seq"
PROJECT_LOCK = REPO / ".mlflow-registry.lock"
LOCK_TIMEOUT_S = 120.0
MAX_EVENTS = 100  # kept per version (a tag value holds at most 100,000 characters)


class RegistryError(PicklableErrorMixin, StageError):
    """The registry cannot do what was asked; the message names the model, the version and what
    was expected."""

    def __init__(self, message: str, model: str | None = None, version: str | None = None):
        self.model, self.version = model, version
        super().__init__(message)


def metric_tag(metric: str) -> str:
    return f"eval_{metric}"


def decide_promotion(candidate: float, champion: float | None, same_eval_set: bool,
                     min_improvement: float, champion_version: str | None = None,
                     metric: str = "metric") -> tuple[bool, str]:
    """The registry never promotes a worse model: promote only over no champion
    (`champion_version` None and no value), or over one measured on the same evaluation set
    that the candidate beats by at least min_improvement. A champion that exists but has no
    value for the metric (`champion` None, `champion_version` set) is never replaced."""
    if not math.isfinite(candidate):
        return False, f"candidate {metric} is {candidate}, not a number that can beat anything"
    if champion is None and champion_version is None:
        return True, "no champion yet"
    if champion is None:
        return False, (f"champion v{champion_version} has no {metric_tag(metric)} tag; compare "
                       "by hand or `promote` explicitly")
    if not same_eval_set:
        return False, "champion was evaluated on a different eval set; compare by hand"
    if candidate >= champion + min_improvement and candidate > champion:
        return True, f"{candidate:.4f} beats champion {champion:.4f}"
    return False, f"{candidate:.4f} does not beat champion {champion:.4f} (+{min_improvement})"


# ----------------------------------------------------------------------------------- the lock
def lock_path(registry_uri: str) -> Path:
    """`<db>.lock` beside a sqlite store; the project's lock file for any other store."""
    if registry_uri.startswith("sqlite:///"):
        db = Path(registry_uri.removeprefix("sqlite:///").split("?")[0]).absolute()
        return db.with_name(db.name + ".lock")
    return PROJECT_LOCK


def _flock(fd: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


@contextlib.contextmanager
def registry_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock on `path` across processes. The holder removes the file before releasing
    it, so none is left behind; a process that waited on a file removed meanwhile tries again
    on the current one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _flock(fd, deadline):
                raise RegistryError(f"registry lock {path} still held after {timeout:.0f} s; "
                                    "expected the other promotion to finish (is one hung?)")
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
                if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- registry reads
def _registry_uri(client) -> str:
    import mlflow

    return getattr(client, "_registry_uri", None) or mlflow.get_registry_uri()


def _is_missing(err: Exception) -> bool:
    return getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if _is_missing(err):
            raise RegistryError(f"no registered model {name!r} in {_registry_uri(client)}; "
                                "expected one registered by the register stage (dvc repro)",
                                model=name) from None
        raise


def model_version(client, name: str, version: str):
    """The version, or a RegistryError naming the versions there are."""
    from mlflow.exceptions import MlflowException

    version = str(version).removeprefix("v")
    if not version.isdigit():
        raise RegistryError(f"model {name!r}: version {version!r} is not a version number",
                            model=name, version=version)
    try:
        return client.get_model_version(name, version)
    except MlflowException as err:
        if not _is_missing(err):
            raise
    registered_model(client, name)
    known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    raise RegistryError(f"model {name!r} has no version {version}; versions: "
                        f"{', '.join(map(str, known)) or 'none'}", model=name, version=version)


def champion(client, name: str):
    """The version the `champion` alias points to, or None."""
    version = registered_model(client, name).aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, str(version))


def _ver(mv) -> str:
    """A version's number as a string (the sqlite store gives ints, aliases and tags strings)."""
    return str(mv.version)


def metric_value(mv, metric: str) -> float | None:
    raw = mv.tags.get(metric_tag(metric))
    try:
        return None if raw is None else float(raw)
    except ValueError:
        raise RegistryError(f"model {mv.name!r} v{_ver(mv)}: tag {metric_tag(metric)} is "
                            f"{raw!r}; expected a number", model=mv.name,
                            version=_ver(mv)) from None


def events(mv) -> list[dict]:
    return json.loads(mv.tags.get(EVENTS_TAG) or "[]")


# -------------------------------------------------------------------------- champion changes
def _record(client, name: str, mv, event: dict) -> None:
    kept = (events(mv) + [event])[-MAX_EVENTS:]
    client.set_model_version_tag(name, _ver(mv), EVENTS_TAG, json.dumps(kept))


def _move_champion(client, name: str, new, old, kind: str, reason: str, by: str) -> str | None:
    """Point `champion` at `new` (the lock held), confirm by re-reading, then record the event
    on both versions. Returns None when confirmed, else why not."""
    if kind == "promoted":
        client.set_model_version_tag(name, _ver(new), PREVIOUS_TAG, _ver(old) if old else "")
    client.set_registered_model_alias(name, CHAMPION, _ver(new))
    now = champion(client, name)
    if now is None or _ver(now) != _ver(new):
        return (f"set champion of {name!r} to v{_ver(new)} but it reads "
                f"{'no champion' if now is None else 'v' + _ver(now)}: a writer outside "
                "the registry lock changed it")
    rm = registered_model(client, name)
    seq = int(rm.tags.get(SEQ_TAG, "0")) + 1
    at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    base = {"seq": seq, "at": at, "by": by, "reason": reason}
    counter = {"promoted": "replaced", "restored": "rolled_back"}[kind]
    _record(client, name, new, {**base, "event": kind,
                                "previous": _ver(old) if old else None})
    if old is not None:
        _record(client, name, old, {**base, "event": counter, "next": _ver(new)})
    client.set_registered_model_tag(name, SEQ_TAG, str(seq))
    return None


def promote_if_better(client, name: str, version: str, metric: str, min_improvement: float,
                      by: str = "register") -> dict:
    """The automatic promotion: under the registry lock, compare version `version` with the
    champion (by their `eval_<metric>` and `eval_set_md5` tags) and make it champion only when
    `decide_promotion` says so; the alias is re-read to confirm."""
    with registry_lock(lock_path(_registry_uri(client))):
        cand = model_version(client, name, version)
        value = metric_value(cand, metric)
        if value is None:
            raise RegistryError(f"model {name!r} v{_ver(cand)} has no {metric_tag(metric)} "
                                f"tag; expected the value of {metric!r} to compare",
                                model=name, version=_ver(cand))
        champ = champion(client, name)
        out = {"version": _ver(cand), "value": value, "promoted": False, "confirmed": True,
               "previous_champion": _ver(champ) if champ else None,
               "previous_champion_value": metric_value(champ, metric) if champ else None}
        if champ is not None and _ver(champ) == _ver(cand):
            return {**out, "reason": f"v{_ver(cand)} is already champion"}
        cand_set = cand.tags.get(EVAL_SET_TAG)
        same = champ is not None and cand_set is not None and \
            champ.tags.get(EVAL_SET_TAG) == cand_set
        promote, reason = decide_promotion(value, out["previous_champion_value"], same,
                                           min_improvement, out["previous_champion"], metric)
        if promote:
            failed = _move_champion(client, name, cand, champ, "promoted", reason, by)
            if failed:
                return {**out, "confirmed": False, "reason": f"{reason}; {failed}"}
        return {**out, "promoted": promote, "reason": reason}


def promote(client, name: str, version: str, reason: str = "", by: str = "cli") -> dict:
    """Make `version` champion whatever it measured (under the lock); the champion it replaces
    is recorded, so `rollback` returns to it."""
    with registry_lock(lock_path(_registry_uri(client))):
        new = model_version(client, name, version)
        old = champion(client, name)
        out = {"model": name, "version": _ver(new),
               "previous_champion": _ver(old) if old else None, "changed": False}
        if old is not None and _ver(old) == _ver(new):
            return out
        failed = _move_champion(client, name, new, old, "promoted",
                                reason or "promoted explicitly", by)
        if failed:
            raise RegistryError(failed, model=name, version=_ver(new))
        return {**out, "changed": True}


def rollback(client, name: str, reason: str = "", by: str = "cli") -> dict:
    """Undo the latest promotion: the champion goes back to the version it replaced."""
    with registry_lock(lock_path(_registry_uri(client))):
        cur = champion(client, name)
        if cur is None:
            raise RegistryError(f"model {name!r} has no champion; nothing to roll back",
                                model=name)
        prev = cur.tags.get(PREVIOUS_TAG)
        if not prev:
            raise RegistryError(f"model {name!r}: champion v{_ver(cur)} replaced no earlier "
                                "champion; nothing to roll back to", model=name,
                                version=_ver(cur))
        try:
            target = model_version(client, name, prev)
        except RegistryError:
            raise RegistryError(f"model {name!r}: champion v{_ver(cur)} replaced v{prev}, "
                                "which no longer exists; `promote` a version explicitly",
                                model=name, version=prev) from None
        failed = _move_champion(client, name, target, cur, "restored",
                                reason or f"rolled back from v{_ver(cur)}", by)
        if failed:
            raise RegistryError(failed, model=name, version=_ver(target))
        return {"model": name, "version": _ver(target), "rolled_back": _ver(cur)}


# ---------------------------------------------------------------------------------- history
def history(client, name: str) -> list[dict]:
    """One row per version, oldest first: aliases, metric tags, eval set and champion events."""
    rm = registered_model(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in rm.aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"),
                     key=lambda m: int(m.version)):
        metrics = {k.removeprefix("eval_"): v for k, v in sorted(mv.tags.items())
                   if k.startswith("eval_") and k != EVAL_SET_TAG}
        rows.append({"version": _ver(mv), "aliases": sorted(by_version.get(_ver(mv), [])),
                     "metrics": metrics, "eval_set_md5": mv.tags.get(EVAL_SET_TAG),
                     "previous_champion": mv.tags.get(PREVIOUS_TAG), "events": events(mv)})
    return rows


def _fmt_metric(raw: str) -> str:
    try:
        return f"{float(raw):.4f}"
    except ValueError:
        return raw


def _fmt_event(e: dict) -> str:
    other = {"promoted": f"over v{e.get('previous')}" if e.get("previous") else "(first)",
             "restored": f"from v{e.get('previous')}", "replaced": f"by v{e.get('next')}",
             "rolled_back": f"to v{e.get('next')}"}.get(e["event"], "")
    return (f"#{e['seq']} {e['at']} {e['event']} {other} [{e.get('by')}]"
            + (f": {e['reason']}" if e.get("reason") else ""))


def format_history(name: str, rows: list[dict]) -> str:
    head = ("version", "aliases", "metrics", "eval set", "events")
    table = [(r["version"], ",".join(r["aliases"]) or "-",
              " ".join(f"{k}={_fmt_metric(v)}" for k, v in r["metrics"].items()) or "-",
              (r["eval_set_md5"] or "-")[:8],
              ", ".join(f"#{e['seq']} {e['event']}" for e in r["events"]) or "-")
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
    lines = [f"model {name!r}: {len(rows)} version(s)",
             "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    log = sorted((e["seq"], r["version"], e) for r in rows for e in r["events"]
                 if e["event"] in ("promoted", "restored"))
    if log:
        lines += ["", "champion changes:"]
        lines += [f"  v{v} {_fmt_event(e)}" for _, v, e in log]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI
def connect():
    """A client on the project's store (or MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI)."""
    from mlflow import MlflowClient

    from pipelines import tracking

    return MlflowClient(tracking_uri=tracking.tracking_uri())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.ops.registry", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    subs = {"history": sub.add_parser("history", help="versions, aliases, metrics, events"),
            "promote": sub.add_parser("promote", help="make VERSION champion"),
            "rollback": sub.add_parser("rollback", help="champion back to the one it replaced")}
    subs["promote"].add_argument("version")
    for cmd in ("promote", "rollback"):
        subs[cmd].add_argument("--reason", default="", help="recorded with the event")
    for p in subs.values():
        p.add_argument("--model", help="registered model (default: register.model_name)")
    a = ap.parse_args(argv)
    try:
        if a.model is None:
            from pipelines.common import get_params

            a.model = get_params().register_.model_name
        client = connect()
        if a.cmd == "history":
            print(format_history(a.model, history(client, a.model)))
        elif a.cmd == "promote":
            out = promote(client, a.model, a.version, a.reason)
            if out["changed"]:
                was = out["previous_champion"]
                print(f"{a.model}: v{out['version']} is champion (was "
                      f"{'none' if was is None else 'v' + was})")
            else:
                print(f"{a.model}: v{out['version']} is already champion; nothing changed")
        else:
            out = rollback(client, a.model, a.reason)
            print(f"{a.model}: champion rolled back from v{out['rolled_back']} to "
                  f"v{out['version']}")
    except (RegistryError, StageError, ValueError) as err:
        print(f"ERROR [registry]: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
