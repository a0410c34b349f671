"""`python -m eval.bench.load_test --config C`: load-test the running HTTP service with real queries.

Starts ``python -m engine.service`` for the config (its own process, a free port), waits for ``/ready``, then an
async ``httpx`` driver sends ``--n`` queries from the query log (``../shared/datasets/querylog``) with 1, 4 and
16 concurrent clients (closed loop: each client sends its next query when the last one answered), once with the
cross-encoder micro-batching on and once off (``serve.batch_window_ms=0``: every request runs its own batch),
the candidate cache off (every level replays the same queries).
Reported per run: QPS, p50/p90/p99 latency, errors (any non-200 answer or failed connection).

``--churn`` (the demo config): while clients query, a second task deletes products (``DELETE /products``),
adds some (``POST /products``), rebuilds the index (``python -m indexer``) and reloads (``POST /admin/reload``);
every answer after a delete returned is checked for the deleted product.  Zero failed requests is the bar.

Writes ``load.json`` and ``load.md`` to ``--out``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from indexer.vocab_trim import read_query_column
from engine.service.http import ADMIN_ENV
from core.cli import command

QUERYLOG = Path("../shared/datasets/querylog/taobao_queries.tsv")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_key() -> str:
    """The admin key the load test's service runs with (``ECOMSEARCH_ADMIN_KEY``, or one made for this run)."""
    import secrets

    if not os.environ.get(ADMIN_ENV):
        os.environ[ADMIN_ENV] = "load-test-" + secrets.token_urlsafe(12)
    return os.environ[ADMIN_ENV]


class Service:
    """``python -m engine.service`` in a child process, stopped on exit."""

    def __init__(self, config: str, sets: list[str], port: int | None = None, log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "engine.service", "--config", config, "--port", str(self.port)]
        for s in sets:
            cmd += ["--set", s]
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.admin_key = admin_key()  # the churn's adds, deletes and reloads are admin calls
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, ADMIN_ENV: self.admin_key}
        )

    def wait_ready(self, timeout: float = 300.0) -> dict:
        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}")
            try:
                r = httpx.get(self.url + "/ready", timeout=2.0)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the service did not get ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


async def drive(url: str, queries: list[str], concurrency: int, k: int = 10, check=None) -> dict:
    """Send every query once with ``concurrency`` clients; latencies in ms, errors with their reasons."""
    import httpx

    lat = np.zeros(len(queries))
    errors: list[str] = []
    next_i = 0

    async def client(http):
        nonlocal next_i
        while next_i < len(queries):
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                r = await http.get(url + "/search", params={"q": queries[i], "k": k})
                lat[i] = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    # an empty query (after cleaning) is a client error by design: count it apart
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                elif check is not None:
                    problem = check(t0, r.json())
                    if problem:
                        errors.append(problem)
            except httpx.HTTPError as e:
                lat[i] = (time.perf_counter() - t0) * 1000
                errors.append(f"{type(e).__name__}: {e}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(queries),
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(wall, 2),
        "qps": round(len(queries) / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p90_ms": round(float(np.percentile(lat, 90)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


def run_load(
    config: str, sets: list[str], queries: list[str], levels: list[int], batching: bool, log: Path | None
) -> list[dict]:
    # the candidate cache off: every level replays the same queries, and each must cost what a new query costs
    sets = (
        list(sets)
        + ([] if batching else ["serve.batch_window_ms=0"])
        + ["serve.watch_seconds=0", "search.cache_size=0"]
    )
    with Service(config, sets, log=log) as svc:
        svc.wait_ready()
        asyncio.run(drive(svc.url, queries[:20], 2))  # warm up
        out = []
        for c in levels:
            r = asyncio.run(drive(svc.url, queries, c))
            r["batching"] = batching
            out.append(r)
            print(
                f"  batching {'on ' if batching else 'off'} c={c:>2}: {r['qps']:.1f} QPS, p50 {r['p50_ms']} ms, "
                f"p99 {r['p99_ms']} ms, {r['errors']} errors",
                file=sys.stderr,
                flush=True,
            )
        return out


async def churn(url: str, config: str, queries: list[str], product_ids: list[str], new_rows: list[dict]) -> dict:
    """Queries from 4 clients while products are deleted and added, the index rebuilt and reloaded."""
    import httpx

    deleted_at: dict[str, float] = {}
    seen_after_delete: list[str] = []
    steps: list[str] = []

    def check(t_sent: float, body: dict):
        for h in body["hits"]:
            t_del = deleted_at.get(h["product_id"])
            if t_del is not None and t_sent > t_del:
                seen_after_delete.append(h["product_id"])
                return f"deleted product {h['product_id']} returned by a query sent after its delete returned"
        return None

    async def admin():
        headers = {"Authorization": f"Bearer {admin_key()}"}
        async with httpx.AsyncClient(timeout=600.0, headers=headers) as http:
            for pid in product_ids[:3]:
                r = await http.delete(f"{url}/products/{pid}")
                r.raise_for_status()
                deleted_at[pid] = time.perf_counter()
                steps.append(f"DELETE /products/{pid}")
                await asyncio.sleep(0.3)
            r = await http.post(f"{url}/products", json=new_rows)
            r.raise_for_status()
            steps.append(f"POST /products ({len(new_rows)})")
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "indexer",
                "--config",
                config,
                "--no-progress",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            rc = await proc.wait()
            steps.append(f"python -m indexer (full rebuild): exit {rc}")
            r = await http.post(f"{url}/admin/reload")
            r.raise_for_status()
            steps.append(f"POST /admin/reload: changed={r.json()['changed']}")
            for pid in product_ids[3:5]:
                r = await http.delete(f"{url}/products/{pid}")
                r.raise_for_status()
                deleted_at[pid] = time.perf_counter()
                steps.append(f"DELETE /products/{pid}")
            new_id = new_rows[0]["id"]
            r = await http.get(f"{url}/search", params={"q": new_rows[0]["title"], "k": 10})
            steps.append(
                f"added product {new_id} found after reload: {any(h['product_id'] == new_id for h in r.json()['hits'])}"
            )

    done = asyncio.Event()

    async def clients():
        results = []
        i = 0
        while not done.is_set():
            batch = [queries[(i + j) % len(queries)] for j in range(40)]
            i += 40
            results.append(await drive(url, batch, 4, check=check))
        return results

    task = asyncio.create_task(clients())
    await admin()
    await asyncio.sleep(1.0)
    done.set()
    runs = await task
    return {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "error_samples": [e for r in runs for e in r["error_samples"]][:5],
        "deleted_seen_after_delete": len(seen_after_delete),
        "steps": steps,
    }


def scratch_config(config: str, folder: Path) -> Path:
    """A copy of the config whose index folder is a copy of its built indexes: churn never touches the real one."""
    import shutil

    import yaml

    from core.config import load_config

    cfg = load_config(config)
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    index_dir = folder / "index"
    shutil.copytree(cfg.index_dir, index_dir, symlinks=True)
    raw["index_dir"] = str(index_dir.resolve())
    raw["root"] = str(cfg.root)
    path = folder / Path(config).name
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def run_churn(config: str, sets: list[str], queries: list[str], out: Path) -> dict:
    import tempfile

    from engine.search import SearchEngine

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = str(scratch_config(config, Path(tmp)))
        eng = SearchEngine.from_config(cfg_path, load_models=False)
        ids = [eng.products.ids[int(r)] for q in ("蓝牙耳机", "手机", "洗衣液") for r in eng.bm25.search(q, k=5).rows]
        new_rows = [
            {
                "id": f"LOADTEST-{i}",
                "title": f"负载测试 新品 蓝牙耳机 型号{i}",
                "category": "耳机",
                "brand": "测试",
                "price": 99.0,
            }
            for i in range(3)
        ]
        with Service(cfg_path, sets + ["serve.watch_seconds=0"], log=out / "service-churn.log") as svc:
            svc.wait_ready()
            return asyncio.run(churn(svc.url, cfg_path, queries, ids, new_rows))


def write_report(out: Path, result: dict) -> None:
    lines = [
        "# Load test: the HTTP service under concurrent clients",
        "",
        f"Config `{result['config']}` ({' '.join(result['sets']) or 'as is'}), {result['n']} real queries "
        f"from `{QUERYLOG.name}` per run, async httpx clients in closed loop, on this machine "
        f"({os.cpu_count()} cores; the clients share them).",
        "",
        "| micro-batching | clients | QPS | p50 ms | p90 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {'on' if r['batching'] else 'off'} | {r['concurrency']} | {r['qps']} | {r['p50_ms']} | "
            f"{r['p90_ms']} | {r['p99_ms']} | {r['errors']} |"
        )
    if result.get("churn"):
        c = result["churn"]
        lines += [
            "",
            f"Churn (deletes, adds, a full rebuild and a reload while 4 clients query): "
            f"{c['requests']} requests, {c['errors']} errors, deleted products returned after their "
            f"delete: {c['deleted_seen_after_delete']}.",
            "",
            *[f"- {s}" for s in c["steps"]],
        ]
    (out / "load.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.load_test", __doc__, "configs/wentian.yaml", overrides=True)
    ap.add_argument("--queries", default=str(QUERYLOG))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--batching", default="on,off")
    ap.add_argument("--churn", action="store_true", help="also deletes/adds/rebuild/reload under load")
    ap.add_argument("--out", default="reports/serving/load")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    qpath = Path(args.queries)
    if not qpath.is_file():
        print(f"skipped: {qpath} not found (../shared/datasets is not on this machine)", file=sys.stderr)
        return 0
    queries = read_query_column(qpath, distinct=False)[: args.n]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    result = {"config": args.config, "sets": args.set, "n": len(queries), "runs": []}
    for mode in [m for m in args.batching.split(",") if m and levels]:
        result["runs"] += run_load(args.config, args.set, queries, levels, mode == "on", out / f"service-{mode}.log")
    if args.churn:
        result["churn"] = run_churn(args.config, args.set, queries[:200], out)
        print(f"  churn: {result['churn']}", file=sys.stderr)
    (out / "load.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    write_report(out, result)
    print((out / "load.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
