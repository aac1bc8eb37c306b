"""The commands on a set in object storage, as a user runs them: the README's S3 workflow, each fault
one line naming the URL and the fix, a connection lost mid-epoch stopping with interrupted.pt, a
read-only HTTP store."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.building.preprocess import preprocess
from pipeline.common.config import PreprocessConfig, StorageConfig
from pipeline.shardset import shard_format
from pipeline.shardset.sets import open_set
from pipeline.storage.store import Store, StoreError
from pipeline.training.train import train
from tests.conftest import make_easy_set
from tests.helpers import KEYS, plan, run
from tests.servers import MotoServer, free_port, s3_env


ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_s3_workflow_runs_as_written_against_a_fresh_server(s3, tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## Beyond one machine\n", 1)[1].split("\n## ")[0]
    block = re.findall(r"```bash\n(.*?)```", text, flags=re.S)[0]
    server = MotoServer()   # fresh: nothing in it but the bucket the user made
    try:
        env = {**s3_env(server.endpoint), "XDG_CACHE_HOME": str(tmp_path / "cache")}
        subprocess.run([sys.executable, "-c", "import fsspec; fsspec.filesystem('s3').mkdir('my-bucket')"], env=env,
                       check=True)
        make_easy_set(tmp_path / "data" / "lookalike")
        for line in filter(None, block.splitlines()):
            args = shlex.split(line)
            assert args[:2] == ["python", "cli.py"], line
            r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args[2:]], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, (line, r.stdout, r.stderr)
        url = "s3://my-bucket/simpsons-64"
        run_dir = next(tmp_path.glob("runs/*"))
        assert json.loads((run_dir / "config.json").read_text())["shards"] == url
        for key in ("AWS_ENDPOINT_URL", "XDG_CACHE_HOME"):
            monkeypatch.setenv(key, env[key])
        r = run("evaluate", run_dir / "best.pt", "--shards", url)
        assert r.exit_code == 0 and "accuracy" in r.output, r.output
        r = run("preprocess", "--data-dir", tmp_path / "data" / "lookalike", "--size", 64, "--out", url)
        assert r.exit_code == 0 and "up to date" in r.output, r.output
    finally:
        server.stop()


def test_store_faults_are_one_line_naming_the_url_and_the_fix(s3, tmp_path, monkeypatch):
    data = make_easy_set(tmp_path / "data", classes=2, per_class=6)
    cache = tmp_path / "cache"
    down = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    nocreds = {"HOME": str(tmp_path), "AWS_CONFIG_FILE": str(tmp_path / "none"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_ACCESS_KEY_ID": None,
               "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None}
    cases = [
        (("verify", "--out", f"{s3}/set"), down, "unreachable", "AWS_ENDPOINT_URL"),
        (("verify", "--out", f"{s3}/set"), nocreds, "no credentials", "AWS_ACCESS_KEY_ID"),
        (("train", "--shards", f"{s3}/nothing", "--device", "cpu", "--out", tmp_path / "r"), {}, "no object",
         "preprocess --out URL"),
        (("preprocess", "--data-dir", data, "--size", 32, "--out", "https://example.com/set"), {}, "read-only",
         "publish to s3://"),
        (("verify", "--out", "ftp://host/set"), {}, "not a location", "s3://"),
    ]
    for args, env, reason, fix in cases:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.delenv(key, raising=False) if value is None else m.setenv(key, value)
            r = run(*args, "--cache-dir", cache)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.output
        assert reason in lines[0] and fix in lines[0] and "://" in lines[0], lines[0]
    assert not (ROOT / "s3:").exists() and not (ROOT / "https:").exists()


def test_a_manifest_in_the_store_naming_files_outside_its_set_is_refused(s3, tmp_path):
    local = tmp_path / "local"
    preprocess(make_easy_set(tmp_path / "data", classes=2, per_class=6), local, PreprocessConfig(size=32), workers=1)
    m = shard_format.read_manifest(local)
    store = Store(f"{s3}/evil")
    for name in ("../other/train-00000.h5", "/etc/passwd", "s3://elsewhere/train-00000.h5"):
        bad = {**m, "shards": [{**m["shards"][0], "file": name}] + m["shards"][1:]}
        store.fs.pipe_file(store.path("manifest.json"), json.dumps(bad).encode())
        r = run("verify", "--out", f"{s3}/evil", "--cache-dir", tmp_path / "cache")
        lines = r.output.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1, r.output
        assert "s3://" in lines[0] and "not train-NNNNN.h5" in lines[0], lines[0]


def test_a_connection_lost_mid_epoch_stops_with_interrupted_pt_and_resumes_exactly(relay, s3, tmp_path):
    data = make_easy_set(tmp_path / "data")
    url = f"{s3}/set"
    from pipeline.building.publish import publish

    publish(data, url, PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.015),
            StorageConfig(cache_dir=str(tmp_path / "pub")), workers=1)
    shard_bytes = max(e["bytes"] for e in json.loads(Store(url).read("manifest.json"))["shards"])
    storage = StorageConfig(cache_dir=str(tmp_path / "cache"), cache_limit=6 * shard_bytes)
    reference = train(url, plan(tmp_path / "ref", epochs=2, cache="none", batch=8),
                      storage=StorageConfig(cache_dir=str(tmp_path / "ref-cache")))

    def drop(epoch, step):
        if (epoch, step) == (1, 2):
            relay.cut()

    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
    with pytest.raises(StoreError, match=r"unreachable.*continue with --resume .*interrupted\.pt"):
        train(url, plan(tmp_path / "run", epochs=2, cache="none", batch=8), on_step=drop, storage=storage)
    assert (tmp_path / "run" / "interrupted.pt").exists()
    relay.restore()
    resumed = train(url, plan(tmp_path / "run", epochs=2, cache="none", batch=8),
                    resume=tmp_path / "run" / "interrupted.pt", storage=storage)
    for a, b in zip(reference["history"], resumed["history"]):
        assert all(np.isclose(a[k], b[k], rtol=1e-5) for k in KEYS), (a, b)


def test_a_set_served_over_http_reads_as_the_local_set(http_root, tmp_path):
    folder, url = http_root
    preprocess(make_easy_set(tmp_path / "data"), folder / "set", PreprocessConfig(size=32, shard_mb=0.06), workers=1)
    remote = open_set(f"{url}/set", storage=StorageConfig(cache_dir=str(tmp_path / "cache")))
    local = shard_format.open_set(folder / "set")
    assert remote.counts == local.counts
    for split in ("train", "val"):
        assert np.array_equal(remote.split(split).load_all(), local.split(split).load_all())
    with pytest.raises(StoreError, match="read-only"):
        Store(f"{url}/set").upload(folder / "set" / "manifest.json", "x.json")
