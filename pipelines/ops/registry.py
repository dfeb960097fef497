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

History lives in the registry. The registered model carries `champion_stack` (a JSON list of
versions, oldest first, whose last entry is the champion: a promotion pushes, `rollback` pops,
so repeated rollbacks walk back through every earlier champion and re-promoting a version never
overwrites what lies below it) and `champion_seq` (the number of the latest event); each version
carries `champion_events` (a JSON list of the champion events it took part in) and
`previous_champion` (the champion it replaced when it was last promoted). The registered model's
description holds the same history as a Markdown table (newest first), so the MLflow UI shows
it on the model's page; text written above that section is kept.

Every change is computed in full (every tag it builds on parsed) before the first write, and any
error afterwards takes back what was written: a corrupt tag or a failed write leaves the alias
where it was. A champion alias that points to a deleted version, or a stack whose top lost its
alias, is a broken champion: `history` reports it, the automatic promotion refuses to pass it off
as "no champion yet", and `promote VERSION` (or `rollback`) repairs it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
STACK_TAG = "champion_stack"
MAX_EVENTS = 100  # kept per version (a tag value holds at most 100,000 characters)
MAX_STACK = 200  # kept on the registered model (a tag value holds at most 5,000 characters)
DESCRIPTION_LIMIT = 5000  # a registered model's description, in the SQL stores
HISTORY_HEADING = "### Champion history"


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


# ---------------------------------------------------------------------------- registry state
def _json_tag(raw: str | None, tag: str, where: str, kind: type, default, expected: str,
              model: str, version: str | None = None):
    """A JSON tag's value, checked; a RegistryError naming the tag when it is not what the
    registry writes (so nothing is changed on the strength of a corrupt history)."""
    if raw is None or raw == "":
        return default
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RegistryError(f"model {model!r}: tag {tag} on {where} is {raw[:60]!r}; expected "
                            f"{expected} (fix or delete the tag; nothing was changed)",
                            model=model, version=version)
    return value


def events(mv) -> list[dict]:
    found = _json_tag(mv.tags.get(EVENTS_TAG), EVENTS_TAG, f"v{_ver(mv)}", list, [],
                      "a JSON list of event objects", mv.name, _ver(mv))
    if not all(isinstance(e, dict) and "seq" in e and "event" in e for e in found):
        raise RegistryError(f"model {mv.name!r}: tag {EVENTS_TAG} on v{_ver(mv)} holds an entry "
                            "without 'seq' and 'event'; expected the registry's event objects "
                            "(fix or delete the tag; nothing was changed)",
                            model=mv.name, version=_ver(mv))
    return found


def _seq(rm) -> int:
    return _json_tag(rm.tags.get(SEQ_TAG), SEQ_TAG, "the registered model", int, 0,
                     "a whole number", rm.name)


def _stack(rm) -> list[str]:
    """The champion stack, oldest first; without the tag (a model promoted before the stack
    existed) the current alias alone."""
    if STACK_TAG not in rm.tags:
        alias = rm.aliases.get(CHAMPION)
        return [] if alias is None else [str(alias)]
    found = _json_tag(rm.tags[STACK_TAG], STACK_TAG, "the registered model", list, [],
                      "a JSON list of version numbers", rm.name)
    if not all(str(v).isdigit() for v in found):
        raise RegistryError(f"model {rm.name!r}: tag {STACK_TAG} is {rm.tags[STACK_TAG][:60]!r}"
                            "; expected a JSON list of version numbers (fix or delete the tag; "
                            "nothing was changed)", model=rm.name)
    return [str(v) for v in found]


def _version_or_none(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as err:
        if _is_missing(err):
            return None
        raise


class DanglingChampion(RegistryError):
    """The `champion` alias names a version that does not exist."""


def champion(client, name: str):
    """The version the `champion` alias points to, or None when there is no alias; a
    DanglingChampion error when the alias names a version that no longer exists."""
    version = registered_model(client, name).aliases.get(CHAMPION)
    if version is None:
        return None
    mv = _version_or_none(client, name, str(version))
    if mv is None:
        raise DanglingChampion(f"model {name!r}: the champion alias points to v{version}, which "
                               "does not exist", model=name, version=str(version))
    return mv


@dataclasses.dataclass
class State:
    """What the registry knows of the champion before a change: the live champion (None when
    there is none or it is broken), `problem` (why the champion cannot be trusted: a dangling
    alias, a deleted champion, a removed alias), the stack and the event counter."""
    rm: object
    champ: object
    problem: str | None
    stack: list[str]
    seq: int


REPAIR = "repair with `python -m pipelines.ops.registry promote VERSION`"


def read_state(client, name: str) -> State:
    """The champion as the alias and the stack tell it, checked against each other: a stack
    whose top has no alias (alias removed, version deleted) is a problem, not 'no champion'."""
    rm = registered_model(client, name)
    stack, seq = _stack(rm), _seq(rm)
    problem = None
    try:
        champ = champion(client, name)
    except DanglingChampion as err:
        champ, problem = None, f"{err} (deleted?)"
    if champ is None and problem is None and stack:
        gone = _version_or_none(client, name, stack[-1]) is None
        problem = (f"model {name!r}: champion v{stack[-1]} "
                   + ("was deleted" if gone else "lost its champion alias"))
    if champ is not None and (not stack or stack[-1] != _ver(champ)):
        stack = stack + [_ver(champ)]  # the alias was set outside the registry: it counts
    return State(rm, champ, problem, stack, seq)


# -------------------------------------------------------------------------- champion changes
def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Undo:
    """Writes to the registry that can be taken back: each records how to restore what it
    replaced, and `undo` restores them newest first."""

    def __init__(self, client, name: str):
        self.client, self.name, self.steps = client, name, []

    def alias(self, version: str, before: str | None) -> None:
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        self.steps.append(
            (lambda: self.client.set_registered_model_alias(self.name, CHAMPION, before))
            if before is not None else
            (lambda: self.client.delete_registered_model_alias(self.name, CHAMPION)))

    def version_tag(self, mv, key: str, value: str) -> None:
        before = mv.tags.get(key)
        self.client.set_model_version_tag(self.name, _ver(mv), key, value)
        self.steps.append(
            (lambda: self.client.set_model_version_tag(self.name, _ver(mv), key, before))
            if before is not None else
            (lambda: self.client.delete_model_version_tag(self.name, _ver(mv), key)))

    def model_tag(self, rm, key: str, value: str) -> None:
        before = rm.tags.get(key)
        self.client.set_registered_model_tag(self.name, key, value)
        self.steps.append(
            (lambda: self.client.set_registered_model_tag(self.name, key, before))
            if before is not None else
            (lambda: self.client.delete_registered_model_tag(self.name, key)))

    def description(self, rm, text: str) -> None:
        before = rm.description or ""
        self.client.update_registered_model(self.name, description=text)
        self.steps.append(
            lambda: self.client.update_registered_model(self.name, description=before))

    def undo(self) -> list[str]:
        failed = []
        for step in reversed(self.steps):
            try:
                step()
            except Exception as err:  # noqa: BLE001 - every step is tried; failures reported
                failed.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
        return failed


def _change(client, name: str, state: State, new, kind: str, reason: str, by: str,
            stack: list[str]) -> None:
    """Point `champion` at `new` and record it: every value is computed (and every tag it
    builds on parsed) before the first write; the alias moves first and is re-read; then the
    history tags and the description. Any error takes back what was written, so the alias
    stays where it was."""
    old = state.champ
    seq = state.seq + 1
    base = {"seq": seq, "at": _now(), "by": by, "reason": reason}
    counter = {"promoted": "replaced", "restored": "rolled_back"}[kind]
    new_events = (events(new) + [{**base, "event": kind,
                                  "previous": _ver(old) if old else None}])[-MAX_EVENTS:]
    old_events = None if old is None else \
        (events(old) + [{**base, "event": counter, "next": _ver(new)}])[-MAX_EVENTS:]
    logs = {_ver(mv): events(mv) for mv in _all_versions(client, name)}
    logs[_ver(new)] = new_events
    if old is not None:
        logs[_ver(old)] = old_events
    stack = stack[-MAX_STACK:]
    text = _with_history(state.rm.description, name, _changes(logs), stack)

    undo = _Undo(client, name)
    try:
        undo.alias(_ver(new), state.rm.aliases.get(CHAMPION) if state.champ else None)
        now = champion(client, name)
        if now is None or _ver(now) != _ver(new):
            raise RegistryError(f"set champion of {name!r} to v{_ver(new)} but it reads "
                                f"{'no champion' if now is None else 'v' + _ver(now)}: a writer "
                                "outside the registry lock changed it", model=name,
                                version=_ver(new))
        if kind == "promoted":
            undo.version_tag(new, PREVIOUS_TAG, _ver(old) if old else "")
        undo.version_tag(new, EVENTS_TAG, json.dumps(new_events))
        if old is not None:
            undo.version_tag(old, EVENTS_TAG, json.dumps(old_events))
        undo.model_tag(state.rm, STACK_TAG, json.dumps(stack))
        undo.model_tag(state.rm, SEQ_TAG, str(seq))
        undo.description(state.rm, text)
    except Exception as err:
        failed = undo.undo()
        was = f"v{_ver(old)}" if old else "no champion"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RegistryError(
            f"model {name!r}: moving champion to v{_ver(new)} failed ({msg}); "
            + (f"the champion stays {was}" if not failed else
               f"restoring the champion to {was} also failed: {'; '.join(failed)}"),
            model=name, version=_ver(new)) from None


def promote_if_better(client, name: str, version: str, metric: str, min_improvement: float,
                      by: str = "register") -> dict:
    """The automatic promotion: under the registry lock, compare version `version` with the
    champion (by their `eval_<metric>` and `eval_set_md5` tags) and make it champion only when
    `decide_promotion` says so; the alias is re-read to confirm. A broken champion (dangling
    alias, deleted version) is reported and never taken for 'no champion yet'."""
    with registry_lock(lock_path(_registry_uri(client))):
        cand = model_version(client, name, version)
        value = metric_value(cand, metric)
        if value is None:
            raise RegistryError(f"model {name!r} v{_ver(cand)} has no {metric_tag(metric)} "
                                f"tag; expected the value of {metric!r} to compare",
                                model=name, version=_ver(cand))
        state = read_state(client, name)
        champ = state.champ
        out = {"version": _ver(cand), "value": value, "promoted": False, "confirmed": True,
               "previous_champion": _ver(champ) if champ else None,
               "previous_champion_value": metric_value(champ, metric) if champ else None}
        if state.problem:
            return {**out, "reason": f"{state.problem}; not promoted automatically, {REPAIR}"}
        if champ is not None and _ver(champ) == _ver(cand):
            return {**out, "reason": f"v{_ver(cand)} is already champion"}
        cand_set = cand.tags.get(EVAL_SET_TAG)
        same = champ is not None and cand_set is not None and \
            champ.tags.get(EVAL_SET_TAG) == cand_set
        promote, reason = decide_promotion(value, out["previous_champion_value"], same,
                                           min_improvement, out["previous_champion"], metric)
        if promote:
            _change(client, name, state, cand, "promoted", reason, by,
                    state.stack + [_ver(cand)])
        return {**out, "promoted": promote, "reason": reason}


def promote(client, name: str, version: str, reason: str = "", by: str = "cli") -> dict:
    """Make `version` champion whatever it measured (under the lock) and push it on the
    champion stack, so `rollback` returns to the champion it replaced. This also repairs a
    broken champion (dangling alias, deleted version)."""
    with registry_lock(lock_path(_registry_uri(client))):
        new = model_version(client, name, version)
        state = read_state(client, name)
        old = state.champ
        out = {"model": name, "version": _ver(new),
               "previous_champion": _ver(old) if old else None, "changed": False,
               "repaired": state.problem}
        if old is not None and _ver(old) == _ver(new):
            return out
        stack = state.stack if state.stack[-1:] == [_ver(new)] else state.stack + [_ver(new)]
        _change(client, name, state, new, "promoted", reason or "promoted explicitly", by,
                stack)
        return {**out, "changed": True}


def rollback(client, name: str, reason: str = "", by: str = "cli") -> dict:
    """Undo the latest change of champion: pop the stack and make the champion below it
    (skipping versions deleted since) champion again; repeated rollbacks walk back the stack."""
    with registry_lock(lock_path(_registry_uri(client))):
        state = read_state(client, name)
        if not state.stack:
            raise RegistryError(f"model {name!r} has no champion; nothing to roll back",
                                model=name)
        top, below = state.stack[-1], list(state.stack[:-1])
        skipped, target = [], None
        while below and target is None:
            target = _version_or_none(client, name, below[-1])
            if target is None:
                skipped.append(below.pop())
        if target is None:
            gone = f" (v{', v'.join(skipped)} no longer exist)" if skipped else ""
            raise RegistryError(f"model {name!r}: champion v{top} replaced no earlier "
                                f"champion{gone}; nothing to roll back to", model=name,
                                version=top)
        if state.champ is None:
            note = f"rolled back from v{top} ({state.problem.split(': ', 1)[-1]})"
        else:
            note = f"rolled back from v{top}"
        _change(client, name, state, target, "restored", reason or note, by, below)
        return {"model": name, "version": _ver(target), "rolled_back": top,
                "skipped": skipped}


# ---------------------------------------------------------------------------------- history
def _all_versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version))


def _changes(logs: dict[str, list[dict]]) -> list[tuple[str, dict]]:
    """Every champion change (promotion or restore), oldest first, as (version, event)."""
    found = [(v, e) for v, evs in logs.items() for e in evs
             if e["event"] in ("promoted", "restored")]
    return sorted(found, key=lambda ve: (ve[1]["seq"], int(ve[0])))


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def history_markdown(name: str, changes: list[tuple[str, dict]], stack: list[str],
                     limit: int = DESCRIPTION_LIMIT) -> str:
    """The champion history as a Markdown section (newest first), cut to `limit` characters
    by leaving out the oldest rows."""
    head = [HISTORY_HEADING, "",
            f"Champion stack (oldest first; `rollback` pops it): "
            f"{' → '.join('v' + v for v in stack) or 'empty'}", "",
            "| # | when (UTC) | champion | change | by | reason |",
            "|---|---|---|---|---|---|"]
    rows = [f"| {e['seq']} | {e['at']} | v{v} | "
            + _md_cell({"promoted": f"promoted over v{e.get('previous')}"
                        if e.get("previous") else "promoted (first)",
                        "restored": f"rolled back from v{e.get('previous')}"}[e["event"]])
            + f" | {_md_cell(e.get('by', ''))} | {_md_cell(e.get('reason', ''))} |"
            for v, e in reversed(changes)]
    while True:
        left = len(changes) - len(rows)
        tail = ([f"", f"{left} earlier change(s): `python -m pipelines.ops.registry history`"]
                if left else [])
        text = "\n".join(head + rows + tail)
        if len(text) <= limit or not rows:
            return text
        rows.pop()


def _with_history(description: str | None, name: str, changes, stack) -> str:
    """The registered model's description with its champion-history section replaced; text
    written above the section is kept."""
    kept = (description or "").split(HISTORY_HEADING, 1)[0].rstrip()
    room = DESCRIPTION_LIMIT - len(kept) - 2
    section = history_markdown(name, changes, stack, limit=room)
    return f"{kept}\n\n{section}" if kept else section


def history(client, name: str) -> dict:
    """The champion (stack, problem) and one row per version, oldest first: aliases, metric
    tags, eval set and champion events."""
    state = read_state(client, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in state.rm.aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    rows = []
    for mv in _all_versions(client, name):
        metrics = {k.removeprefix("eval_"): v for k, v in sorted(mv.tags.items())
                   if k.startswith("eval_") and k != EVAL_SET_TAG}
        rows.append({"version": _ver(mv), "aliases": sorted(by_version.get(_ver(mv), [])),
                     "metrics": metrics, "eval_set_md5": mv.tags.get(EVAL_SET_TAG),
                     "previous_champion": mv.tags.get(PREVIOUS_TAG), "events": events(mv)})
    return {"model": name, "champion": _ver(state.champ) if state.champ else None,
            "stack": state.stack, "problem": state.problem, "versions": rows}


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


def format_history(hist: dict) -> str:
    rows = hist["versions"]
    head = ("version", "aliases", "metrics", "eval set", "events")
    table = [(r["version"], ",".join(r["aliases"]) or "-",
              " ".join(f"{k}={_fmt_metric(v)}" for k, v in r["metrics"].items()) or "-",
              (r["eval_set_md5"] or "-")[:8],
              ", ".join(f"#{e['seq']} {e['event']}" for e in r["events"]) or "-")
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
    lines = [f"model {hist['model']!r}: {len(rows)} version(s)",
             "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines += ["", "champion stack (oldest first, rollback pops): "
              + (" ".join(f"v{v}" for v in hist["stack"]) or "empty")]
    if hist["problem"]:
        lines += [f"BROKEN CHAMPION: {hist['problem']}; {REPAIR}"]
    log = _changes({r["version"]: r["events"] for r in rows})
    if log:
        lines += ["", "champion changes:"]
        lines += [f"  v{v} {_fmt_event(e)}" for v, e in log]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI
def require_server(uri: str | None = None, timeout_s: float = 10.0) -> None:
    """For an HTTP(S) tracking URI (default: the one in use), a StageError at once when nothing
    accepts connections at its host and port (MLflow's client would retry for minutes, then fail
    with a traceback). Only the TCP connection is tried: a busy server slow to answer passes."""
    import socket
    from urllib.parse import urlsplit

    from pipelines import tracking

    uri = uri or tracking.tracking_uri()
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise StageError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not accept "
                         f"connections: {reason}; start it (python -m pipelines.ops.services "
                         "start) or unset MLFLOW_TRACKING_URI to use the project's mlflow.db")


def connect():
    """A client on the project's store (or MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI)."""
    from mlflow import MlflowClient

    from pipelines import tracking

    require_server()
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

            try:
                a.model = get_params().register_.model_name
            except (FileNotFoundError, ValueError) as err:
                raise RegistryError(f"no --model given and no register.model_name to default "
                                    f"to ({err}); pass --model NAME") from err
        client = connect()
        if a.cmd == "history":
            print(format_history(history(client, a.model)))
        elif a.cmd == "promote":
            out = promote(client, a.model, a.version, a.reason)
            if out["repaired"]:
                print(f"{a.model}: repaired: {out['repaired']}")
            if out["changed"]:
                was = out["previous_champion"]
                print(f"{a.model}: v{out['version']} is champion (was "
                      f"{'none' if was is None else 'v' + was})")
            else:
                print(f"{a.model}: v{out['version']} is already champion; nothing changed")
        else:
            out = rollback(client, a.model, a.reason)
            skipped = "".join(f" (skipped v{v}: deleted)" for v in out["skipped"])
            print(f"{a.model}: champion rolled back from v{out['rolled_back']} to "
                  f"v{out['version']}{skipped}")
    except (RegistryError, StageError, ValueError) as err:
        print(f"ERROR [registry]: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the store itself failed (MlflowException: a server error)
        from mlflow.exceptions import MlflowException
        from pipelines import tracking

        if not isinstance(err, MlflowException):
            raise
        first = (str(err).splitlines() or [""])[0][:300]
        print(f"ERROR [registry]: the MLflow store {tracking.tracking_uri()} failed: {first}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
