"""The registry's champion against a real MLflow sqlite store: concurrent promotions from two
processes, a switched metric, the eval-set identity, the register stage's use of the locked
promotion, and the `python -m pipelines.ops.registry` CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipelines.ops import registry
from pipelines.common import REPO
from pipelines.ops.registry import (CHAMPION, PREVIOUS_TAG, RegistryError, decide_promotion,
                                lock_path, registry_lock)

METRIC = "miou_crf"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite store for the module (creating MLflow's schema takes seconds)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry_store")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp_:
        mp_.chdir(root)  # the default experiment's artifacts, if anything writes there
        MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return uri


@pytest.fixture
def client(store, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return MlflowClient(tracking_uri=store, registry_uri=store)


def new_model(client) -> str:
    name = f"m{uuid.uuid4().hex[:10]}"
    client.create_registered_model(name)
    return name


def add_version(client, name: str, value: float | None, eval_set: str = "set-a",
                metric: str = METRIC) -> str:
    mv = client.create_model_version(name, source="/nonexistent/model", run_id=None)
    if value is not None:
        client.set_model_version_tag(name, mv.version, f"eval_{metric}", str(value))
    client.set_model_version_tag(name, mv.version, "eval_set_md5", eval_set)
    return str(mv.version)


def champion_version(client, name: str) -> str | None:
    mv = registry.champion(client, name)
    return None if mv is None else str(mv.version)


# ------------------------------------------------------------------------------ pure decision
def test_decision_refuses_a_champion_without_the_metric():
    promote, reason = decide_promotion(0.99, None, same_eval_set=True, min_improvement=0.0,
                                       champion_version="3", metric="miou_crf")
    assert promote is False
    assert "champion v3 has no eval_miou_crf tag" in reason and "promote" in reason


def test_decision_refuses_a_non_finite_candidate():
    assert decide_promotion(float("nan"), None, True, 0.0)[0] is False
    assert decide_promotion(float("nan"), 0.1, True, 0.0, champion_version="1")[0] is False


def test_registry_error_survives_pickling():
    err = RegistryError("model 'm' has no version 9; versions: 1", model="m", version="9")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is RegistryError and str(back) == str(err)
    assert (back.model, back.version) == ("m", "9")


# ----------------------------------------------------------------------------------- the lock
def test_lock_file_beside_a_sqlite_store_and_gone_after(tmp_path):
    path = lock_path(f"sqlite:///{tmp_path}/mlflow.db")
    assert path == tmp_path / "mlflow.db.lock"
    assert lock_path("http://tracking.example:5000") == registry.PROJECT_LOCK
    with registry_lock(path):
        assert path.exists()
    assert not path.exists()


def _hold_lock(path: str, held, release) -> None:
    with registry_lock(Path(path)):
        held.set()
        release.wait(30)


def test_lock_excludes_another_process(tmp_path):
    ctx = mp.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    path = tmp_path / "x.lock"
    proc = ctx.Process(target=_hold_lock, args=(str(path), held, release))
    proc.start()
    try:
        assert held.wait(60)
        with pytest.raises(RegistryError, match="still held"):
            with registry_lock(path, timeout=0.3):
                pass
        release.set()
        t0 = time.monotonic()
        with registry_lock(path, timeout=30):
            pass
        assert time.monotonic() - t0 < 30
    finally:
        release.set()
        proc.join(30)


# ------------------------------------------------------------------ concurrent promotions
def _promotion_worker(uri: str, tasks, results, barrier) -> None:
    """Runs promotions sent on `tasks` (name, version, seconds to wait after reading the
    champion), each released by the shared barrier at the same moment as the other worker's."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models(max_results=1)
    read_champion, hold = registry.champion, [0.0]

    def slow_champion(c, name):
        mv = read_champion(c, name)
        time.sleep(hold[0])  # widens the read-then-write window a lost update needs
        return mv

    registry.champion = slow_champion
    while (task := tasks.get()) is not None:
        name, version, hold[0] = task
        barrier.wait(60)
        try:
            results.put(("ok", registry.promote_if_better(client, name, version, METRIC, 0.0)))
        except Exception as err:  # noqa: BLE001 - sent back to the test
            results.put(("error", err))


@pytest.fixture(scope="module")
def workers(store):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    queues = [ctx.Queue(), ctx.Queue()]
    procs = [ctx.Process(target=_promotion_worker, args=(store, q, results, barrier))
             for q in queues]
    for p in procs:
        p.start()
    yield queues, results
    for q in queues:
        q.put(None)
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.terminate()


# (value registered first, value whose worker is slow after reading the champion)
ROUNDS = [(0.30, 0.30), (0.35, 0.30), (0.30, 0.35), (0.35, 0.35), (0.30, 0.0), (0.35, 0.0)]


@pytest.mark.parametrize("first, slow", ROUNDS)
def test_concurrent_promotions_end_with_the_better_model(client, workers, first, slow):
    queues, results = workers
    name = new_model(client)
    values = [first, 0.35 if first == 0.30 else 0.30]
    versions = {v: add_version(client, name, v) for v in values}
    for q, v in zip(queues, values):
        q.put((name, versions[v], 0.4 if v == slow else 0.0))
    outs = [results.get(timeout=60) for _ in values]
    assert all(kind == "ok" for kind, _ in outs), outs
    assert champion_version(client, name) == versions[0.35]
    by_version = {o["version"]: o for _, o in outs}
    assert by_version[versions[0.35]]["promoted"] is True
    low = by_version[versions[0.30]]
    if low["promoted"]:  # 0.30 went first, then 0.35 was compared with it
        assert by_version[versions[0.35]]["previous_champion"] == versions[0.30]
    else:
        assert "does not beat champion 0.3500" in low["reason"]


# ------------------------------------------------------------------------ refused promotions
def test_metric_switch_cannot_promote(client):
    name = new_model(client)
    old = add_version(client, name, 0.40, metric="miou")
    registry.promote_if_better(client, name, old, "miou", 0.0)
    new = add_version(client, name, 0.05)  # tagged eval_miou_crf only
    out = registry.promote_if_better(client, name, new, METRIC, 0.0)
    assert out["promoted"] is False
    assert f"champion v{old} has no eval_{METRIC} tag" in out["reason"]
    assert champion_version(client, name) == old


def test_candidate_without_the_metric_is_an_error(client):
    name = new_model(client)
    v = add_version(client, name, None)
    with pytest.raises(RegistryError, match=rf"{name}.*v{v} has no eval_{METRIC} tag"):
        registry.promote_if_better(client, name, v, METRIC, 0.0)


def _copy_list(tiny_list: Path, dst: Path) -> Path:
    shutil.copytree(tiny_list.parent, dst)
    return dst / tiny_list.name


SETTINGS = {"scales": [1.0], "flip": False, "output_stride": None, "tile_size": None,
            "tile_overlap": 256, "precision": "float32", "crf": True, "crf_cv_images": 50}


def _flip_byte(path: Path, offset: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_changed_eval_image_blocks_the_comparison(client, tiny_list, tmp_path):
    from pipelines.stages.evaluate import eval_set_md5

    lst = _copy_list(tiny_list, tmp_path / "val")
    ids = ["s1", "s2", "s3"]
    before = eval_set_md5(lst, ids, SETTINGS)
    _flip_byte(lst.parent / "images" / "s2.jpg")
    after = eval_set_md5(lst, ids, SETTINGS)
    assert after != before

    name = new_model(client)
    champ = add_version(client, name, 0.30, eval_set=before)
    registry.promote_if_better(client, name, champ, METRIC, 0.0)
    cand = add_version(client, name, 0.90, eval_set=after)
    out = registry.promote_if_better(client, name, cand, METRIC, 0.0)
    assert out["promoted"] is False and "different eval set" in out["reason"]
    assert champion_version(client, name) == champ


def test_eval_set_md5_covers_ids_content_and_settings(tiny_list, tmp_path):
    from pipelines.stages.evaluate import eval_set_md5

    lst = _copy_list(tiny_list, tmp_path / "val")
    ids = ["s0", "s1", "s2", "s3"]
    base = eval_set_md5(lst, ids, SETTINGS)
    assert eval_set_md5(lst, list(ids), dict(SETTINGS)) == base  # same inputs, same value
    assert eval_set_md5(lst, ids[:3], SETTINGS) != base
    assert eval_set_md5(lst, ids[::-1], SETTINGS) != base
    for key, value in [("scales", [0.5, 1.0]), ("flip", True), ("output_stride", 8),
                       ("precision", "bfloat16"), ("crf", False), ("crf_cv_images", 40)]:
        assert eval_set_md5(lst, ids, {**SETTINGS, key: value}) != base, key
    for rel in ("images/s0.jpg", "labels/s3.png"):
        path = lst.parent / rel
        original = path.read_bytes()
        _flip_byte(path, offset=len(original) // 2)
        assert eval_set_md5(lst, ids, SETTINGS) != base, rel
        path.write_bytes(original)
        assert eval_set_md5(lst, ids, SETTINGS) == base
    # a file outside the ids does not count
    _flip_byte(lst.parent / "images" / "s5.jpg")
    assert eval_set_md5(lst, ids, SETTINGS) == base


def test_eval_settings_from_params():
    from pipelines.common import get_params
    from pipelines.stages.evaluate import eval_settings

    params = get_params()
    s = eval_settings(params)
    inf = params.inference
    assert s == {"scales": [float(x) for x in inf.scales], "flip": inf.flip,
                 "output_stride": inf.output_stride, "tile_size": inf.tile_size,
                 "tile_overlap": inf.tile_overlap, "precision": inf.precision,
                 "crf": inf.crf, "crf_cv_images": params.crf_search.cv_images}


# ------------------------------------------------------------------------ the register stage
REGISTRATION_KEYS = {"model_name", "version", "metric", "value", "eval_set_md5",
                     "previous_champion", "previous_champion_value", "promoted", "reason",
                     "aliases", "model_uri", "protocol"}


@pytest.fixture
def stage_env(client, store, tmp_path, monkeypatch):
    """params.yaml with data in tmp_path, the stage's inputs there, MLflow's fluent API on the
    module's store, and a tiny pyfunc model in place of the DeepLab one."""
    import mlflow
    import mlflow.pyfunc

    import pipelines.ops.serving

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["base"]["data_dir"] = str(tmp_path / "data")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("DEEPLAB_PARAMS", str(params))
    d = tmp_path / "data"
    for rel in ("models/finetune/model.pt", "crf_search/best_params.json"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("{}")
    from deeplab_core.crf.densecrf import CRFParams
    from deeplab_core.engine.protocol import InferenceProtocol
    InferenceProtocol(scales=(0.5, 1.0), flip=True, output_stride=8,
                      crf=CRFParams(iterations=3)).save(d / "eval" / "protocol.json")

    class Tiny(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    def tiny_log(checkpoint, crf_params, registered_name, protocol_file=None, classes=None):
        assert protocol_file == d / "eval" / "protocol.json"
        return mlflow.pyfunc.log_model(name="model", python_model=Tiny(), pip_requirements=[],
                                       registered_model_name=registered_name)

    monkeypatch.setattr(pipelines.ops.serving, "log_pyfunc_model", tiny_log)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    exp = f"register-{uuid.uuid4().hex[:8]}"
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        exp, artifact_location=(tmp_path / "artifacts").as_uri()))
    yield d
    mlflow.set_tracking_uri(before)


def test_register_stage_promotes_through_the_lock(client, stage_env, monkeypatch):
    import mlflow

    from pipelines.stages.register import register_model

    name = new_model(client)
    outs = []
    for value in (0.40, 0.35, 0.45):
        (stage_env / "metrics").mkdir(exist_ok=True)
        (stage_env / "metrics" / "evaluate.json").write_text(
            json.dumps({METRIC: value, "eval_set_md5": "set-a", "miou_no_crf": 0.3,
                        "crf_decision": "CRF applied: it beat no CRF"}))
        with mlflow.start_run():
            outs.append(register_model.fn(name, METRIC, 0.0))
    assert all(set(o) == REGISTRATION_KEYS for o in outs)
    assert [o["promoted"] for o in outs] == [True, False, True]
    assert outs[1]["reason"] == "0.3500 does not beat champion 0.4000 (+0.0)"
    assert outs[2]["previous_champion"] == outs[0]["version"]
    assert outs[2]["aliases"] == ["challenger", CHAMPION]
    assert champion_version(client, name) == outs[2]["version"]
    tags = client.get_model_version(name, outs[2]["version"]).tags
    assert tags[PREVIOUS_TAG] == outs[0]["version"]
    assert [e["by"] for e in json.loads(tags["champion_events"])] == ["register"]
    # the protocol travels as tags and in the model card (the version description)
    assert (tags["protocol.scales"], tags["protocol.flip"], tags["protocol.output_stride"],
            tags["protocol.tile_size"]) == ("[0.5, 1.0]", "True", "8", "none")
    assert json.loads(tags["protocol.crf"])["iterations"] == 3
    assert outs[2]["protocol"]["output_stride"] == 8
    card = client.get_model_version(name, outs[2]["version"]).description
    assert "scales 0.5, 1; flip on; output stride 8" in card and "dense CRF w1 4" in card
    assert "CRF decision: CRF applied: it beat no CRF" in card
    assert f"Promotion compares {METRIC} = 45.00 %" in card and "mIoU without CRF" in card


# ---------------------------------------------------------------------------------------- CLI
def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = registry.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_promote_rollback_history_round_trip(client, capsys):
    name = new_model(client)
    v1, v2, v3 = (add_version(client, name, x) for x in (0.30, 0.35, 0.40))
    assert cli(capsys, "promote", v1, "--model", name)[0] == 0
    assert cli(capsys, "promote", v2, "--model", name)[1].strip() == \
        f"{name}: v{v2} is champion (was v{v1})"
    code, out, _ = cli(capsys, "promote", f"v{v3}", "--model", name, "--reason", "hand check")
    assert code == 0 and champion_version(client, name) == v3
    assert "already champion" in cli(capsys, "promote", v3, "--model", name)[1]

    code, out, _ = cli(capsys, "rollback", "--model", name)
    assert code == 0 and out.strip() == f"{name}: champion rolled back from v{v3} to v{v2}"
    assert champion_version(client, name) == v2
    assert cli(capsys, "rollback", "--model", name)[0] == 0
    assert champion_version(client, name) == v1
    code, _, err = cli(capsys, "rollback", "--model", name)
    assert code == 2 and champion_version(client, name) == v1
    assert err.strip() == (f"ERROR [registry]: model {name!r}: champion v{v1} replaced no "
                           "earlier champion; nothing to roll back to")

    code, out, _ = cli(capsys, "history", "--model", name)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"model {name!r}: 3 version(s)"
    row = {ln.split()[0]: ln for ln in lines[2:5]}
    assert "champion" in row[v1] and f"{METRIC}=0.3000" in row[v1] and "set-a" in row[v1]
    assert "champion" not in row[v3]
    changes = "\n".join(lines[lines.index("champion changes:") + 1:])
    assert f"v{v3} #3" in changes and "hand check" in changes
    assert f"v{v2} #4" in changes and f"restored from v{v3}" in changes
    assert f"v{v1} #5" in changes and f"restored from v{v2}" in changes
    events = json.loads(client.get_model_version(name, v3).tags["champion_events"])
    assert [(e["seq"], e["event"]) for e in events] == [(3, "promoted"), (4, "rolled_back")]


def test_cli_errors_are_one_line(client, capsys):
    name = new_model(client)
    add_version(client, name, 0.3)
    cases = [
        (("promote", "9", "--model", name), f"model {name!r} has no version 9; versions: 1"),
        (("promote", "abc", "--model", name), f"model {name!r}: version 'abc' is not a version"),
        (("rollback", "--model", name), f"model {name!r} has no champion; nothing to roll back"),
        (("history", "--model", "absent_model"), "no registered model 'absent_model' in "),
        (("history",), "no registered model 'deeplab' in "),  # register.model_name by default
    ]
    for argv, expected in cases:
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == "", argv
        assert err.count("\n") == 1 and err.startswith(f"ERROR [registry]: {expected}"), err


def test_cli_names_a_server_that_does_not_answer_and_a_missing_model_name(capsys, monkeypatch,
                                                                         tmp_path):
    """No tracking server at MLFLOW_TRACKING_URI: one line at once (not MLflow's minutes of
    retries and a traceback); outside a project, no --model: one line asking for it."""
    from pipelines.ops.procs import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, out, err = cli(capsys, "history", "--model", "m")
    assert (code, out) == (2, "")
    assert err == (f"ERROR [registry]: MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does "
                   "not accept connections: Connection refused; start it (python -m "
                   "pipelines.ops.services start) or unset MLFLOW_TRACKING_URI to use the "
                   "project's mlflow.db\n")
    absent = tmp_path / "params.yaml"
    monkeypatch.setenv("DEEPLAB_PARAMS", str(absent))
    code, out, err = cli(capsys, "promote", "1")
    assert (code, out) == (2, "")
    assert err == ("ERROR [registry]: no --model given and no register.model_name to default "
                   f"to (params file not found: {absent}); pass --model NAME\n")


def test_cli_module_entry_point(client, store, tmp_path):
    name = new_model(client)
    add_version(client, name, 0.3)
    env = {"MLFLOW_TRACKING_URI": store, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "pipelines.ops.registry", "rollback", "--model", name],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (f"ERROR [registry]: model {name!r} has no champion; nothing to roll "
                          "back\n")


# ------------------------------------------------------------------ history you can walk back
def _cli_promote(capsys, name: str, *versions: str) -> None:
    for v in versions:
        assert cli(capsys, "promote", v, "--model", name)[0] == 0


def test_rollback_after_re_promotion_walks_back_not_in_a_cycle(client, capsys):
    name = new_model(client)
    v1, v2 = (add_version(client, name, x) for x in (0.30, 0.35))
    _cli_promote(capsys, name, v2, v1)
    assert cli(capsys, "rollback", "--model", name)[0] == 0
    assert champion_version(client, name) == v2
    code, _, err = cli(capsys, "rollback", "--model", name)
    assert code == 2 and "nothing to roll back to" in err
    assert champion_version(client, name) == v2


def test_rollback_walks_the_whole_stack(client, capsys):
    name = new_model(client)
    v1, v2, v3 = (add_version(client, name, x) for x in (0.30, 0.35, 0.40))
    _cli_promote(capsys, name, v1, v2, v3, v2)
    stack = json.loads(client.get_registered_model(name).tags[registry.STACK_TAG])
    assert stack == [v1, v2, v3, v2]
    walked = []
    while cli(capsys, "rollback", "--model", name)[0] == 0:
        walked.append(champion_version(client, name))
    assert walked == [v3, v2, v1]
    assert json.loads(client.get_registered_model(name).tags[registry.STACK_TAG]) == [v1]


def _snapshot(client, name: str) -> dict:
    rm = client.get_registered_model(name)
    return {"aliases": dict(rm.aliases), "tags": dict(rm.tags), "description": rm.description,
            "versions": {str(mv.version): dict(mv.tags)
                         for mv in client.search_model_versions(f"name = '{name}'")}}


@pytest.mark.parametrize("where, tag, value", [
    ("model", "champion_seq", "seven"),
    ("model", "champion_stack", "[1, 2"),
    ("model", "champion_stack", '["one"]'),
    ("champion", "champion_events", "{broken"),
    ("champion", "champion_events", '[{"at": "x"}]'),
    ("candidate", "champion_events", "3"),
])
def test_corrupt_history_tag_leaves_everything_where_it_was(client, capsys, where, tag, value):
    name = new_model(client)
    v1, v2, v3 = (add_version(client, name, x) for x in (0.30, 0.35, 0.50))
    _cli_promote(capsys, name, v1, v2)
    if where == "model":
        client.set_registered_model_tag(name, tag, value)
    else:
        client.set_model_version_tag(name, v2 if where == "champion" else v3, tag, value)
    before = _snapshot(client, name)
    for argv in (("promote", v3), ("rollback",)):
        code, out, err = cli(capsys, *argv, "--model", name)
        assert code == 2 and out == "", argv
        assert err.count("\n") == 1 and f"tag {tag}" in err and "nothing was changed" in err
    with pytest.raises(RegistryError, match=f"tag {tag}"):
        registry.promote_if_better(client, name, v3, METRIC, 0.0)
    assert _snapshot(client, name) == before
    assert champion_version(client, name) == v2


class FailingDescriptionClient:
    """A real client whose registered-model description update fails: the last write of a
    champion change."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, attr):
        return getattr(self._client, attr)

    def update_registered_model(self, name, description=None):
        raise RuntimeError("store unavailable")


def test_failed_write_takes_back_the_alias_and_tags(client, capsys):
    name = new_model(client)
    v1, v2 = (add_version(client, name, x) for x in (0.30, 0.35))
    _cli_promote(capsys, name, v1)
    before = _snapshot(client, name)
    failing = FailingDescriptionClient(client)
    with pytest.raises(RegistryError, match=rf"moving champion to v{v2} failed \(store "
                                            rf"unavailable\); the champion stays v{v1}"):
        registry.promote(failing, name, v2)
    with pytest.raises(RegistryError, match=r"the champion stays v"):
        registry.promote_if_better(failing, name, v2, METRIC, 0.0)
    assert _snapshot(client, name) == before


def _delete_version_row(store: str, name: str, version: str) -> None:
    """Removes a version behind the registry's back, leaving its alias behind (what a store
    restored from an older backup, or edited by hand, can look like)."""
    import sqlite3

    con = sqlite3.connect(store.removeprefix("sqlite:///"))
    with con:
        con.execute("DELETE FROM model_version_tags WHERE name = ? AND version = ?",
                    (name, int(version)))
        con.execute("DELETE FROM model_versions WHERE name = ? AND version = ?",
                    (name, int(version)))
    con.close()


def test_deleted_champion_is_not_no_champion_and_promote_repairs_it(client, capsys):
    name = new_model(client)
    v1, v2, v3 = (add_version(client, name, x) for x in (0.30, 0.35, 0.01))
    _cli_promote(capsys, name, v1, v2)
    client.delete_model_version(name, v2)  # MLflow drops the alias with the version
    out = registry.promote_if_better(client, name, v3, METRIC, 0.0)
    assert out["promoted"] is False
    assert f"champion v{v2} was deleted" in out["reason"] and "promote VERSION" in out["reason"]
    assert champion_version(client, name) is None
    code, text, _ = cli(capsys, "history", "--model", name)
    assert code == 0 and f"BROKEN CHAMPION: model {name!r}: champion v{v2} was deleted" in text
    # the deleted version is skipped on the way back
    code, text, _ = cli(capsys, "rollback", "--model", name)
    assert code == 0 and text.strip() == f"{name}: champion rolled back from v{v2} to v{v1}"
    _cli_promote(capsys, name, v3)
    assert champion_version(client, name) == v3
    assert "BROKEN" not in cli(capsys, "history", "--model", name)[1]


def test_dangling_alias_is_reported_and_repairable(client, store, capsys):
    name = new_model(client)
    v1, v2, v3 = (add_version(client, name, x) for x in (0.30, 0.35, 0.40))
    _cli_promote(capsys, name, v1, v2)
    _delete_version_row(store, name, v2)
    assert str(client.get_registered_model(name).aliases[CHAMPION]) == v2  # dangling
    out = registry.promote_if_better(client, name, v3, METRIC, 0.0)
    assert out["promoted"] is False
    assert f"champion alias points to v{v2}, which does not exist" in out["reason"]
    code, text, err = cli(capsys, "history", "--model", name)
    assert code == 0 and "BROKEN CHAMPION" in text and err == ""
    code, text, err = cli(capsys, "promote", v3, "--model", name)
    assert code == 0 and err == ""
    assert text.splitlines() == [
        f"{name}: repaired: model {name!r}: the champion alias points to v{v2}, which does not "
        "exist (deleted?)", f"{name}: v{v3} is champion (was none)"]
    assert champion_version(client, name) == v3
    # rollback pops v3, skips the vanished v2 and lands on v1
    code, text, _ = cli(capsys, "rollback", "--model", name)
    assert code == 0 and text.strip() == (f"{name}: champion rolled back from v{v3} to v{v1} "
                                          f"(skipped v{v2}: deleted)")


def test_rollback_repairs_a_dangling_alias(client, store, capsys):
    name = new_model(client)
    v1, v2 = (add_version(client, name, x) for x in (0.30, 0.35))
    _cli_promote(capsys, name, v1, v2)
    _delete_version_row(store, name, v2)
    code, text, err = cli(capsys, "rollback", "--model", name)
    assert code == 0 and err == "" and champion_version(client, name) == v1


def test_history_is_a_markdown_table_in_the_model_description(client, capsys):
    name = new_model(client)
    client.update_registered_model(name, description="DeepLab on VOC.\n\nOwner: vision team.")
    v1, v2 = (add_version(client, name, x) for x in (0.30, 0.35))
    _cli_promote(capsys, name, v1)
    assert cli(capsys, "promote", v2, "--model", name, "--reason", "a | b")[0] == 0
    assert cli(capsys, "rollback", "--model", name)[0] == 0
    text = client.get_registered_model(name).description
    assert text.startswith("DeepLab on VOC.\n\nOwner: vision team.\n\n### Champion history\n")
    assert text.count("### Champion history") == 1
    assert f"Champion stack (oldest first; `rollback` pops it): v{v1}\n" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert table[0] == "| # | when (UTC) | champion | change | by | reason |"
    assert [ln.split(" | ")[0] for ln in table[1:]] == ["| 3", "| 2", "| 1"]
    assert f"| v{v1} | rolled back from v{v2} | cli | rolled back from v{v2} |" in table[1]
    assert f"| v{v2} | promoted over v{v1} | cli | a \\| b |" in table[2]
    assert f"| v{v1} | promoted (first) | cli | promoted explicitly |" in table[3]


def test_long_history_fits_the_description_limit(client, capsys):
    name = new_model(client)
    v1, v2 = (add_version(client, name, x) for x in (0.30, 0.35))
    for i in range(20):
        registry.promote(client, name, v1 if i % 2 else v2, reason="x" * 300)
    text = client.get_registered_model(name).description
    assert len(text) <= registry.DESCRIPTION_LIMIT
    assert "| 20 |" in text and "| 1 |" not in text
    assert text.rstrip().endswith("earlier change(s): `python -m pipelines.ops.registry history`")
