"""Workers benchmark: aggregate C-STORE intake of radflow with 1 worker against 2 workers
(``engine.workers``, PostgreSQL, the only backend that allows several), beside DCMTK storescp.

Data: CT-like (512x512, ~0.5 MB) x500 and small (64x64) x2000 (``--quick``: 50 and 200),
pre-split into as many sender directories as associations (4 and 8); senders: one DCMTK
storescu per directory at once. Servers, each fresh per run: ``radflow-pg`` (1 worker),
``radflow-pg-w2`` (2 workers sharing the port), ``storescp``. Figure: instances/s from the
first sender's start to the last sender's exit (median over ``--repeat``); then the ratios
2 workers / 1 worker and radflow / storescp. Servers and run logic are bench_cstore.py's. It
never asserts on timings.

    python bench/bench_workers.py [--quick] [--repeat N] [--pg-dsn DSN] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_DATA_DIR,
    DataSpec,
    clean_dir,
    dcmtk_tool,
    ensure_dataset,
    format_table,
    install_signal_handlers,
    median_or_none,
    repo_root,
    warm_page_cache,
)
from bench_cstore import (
    DEFAULT_PG_DSN,
    RadflowPg,
    ServerNotReady,
    ServerUnavailable,
    StoreSCP,
    run_once,
)

ASSOCIATIONS = (4, 8)


class RadflowPgWorkers(RadflowPg):
    """radflow on PostgreSQL with ``engine.workers: 2``."""

    name = "radflow-pg-w2"

    def prepare(self) -> None:
        super().prepare()
        cfg = self.workdir / "radflow.yaml"
        cfg.write_text(cfg.read_text() + "engine:\n  workers: 2\n")


def specs(quick: bool, groups: int) -> list[DataSpec]:
    ct, small = (50, 200) if quick else (500, 2000)
    return [DataSpec(name="ct", count=ct, rows=512, cols=512, per_series=min(50, ct // 2),
                     groups=groups),
            DataSpec(name="small", count=small, rows=64, cols=64,
                     per_series=min(100, small // 2), groups=groups)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--pg-dsn", default=DEFAULT_PG_DSN)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--run-timeout", type=float, default=300.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    install_signal_handlers()
    storescu = dcmtk_tool("storescu")
    root = repo_root().resolve()
    try:
        servers = [RadflowPg(root, args.pg_dsn), RadflowPgWorkers(root, args.pg_dsn),
                   StoreSCP(dcmtk_tool("storescp"))]
    except ServerUnavailable as exc:
        print(f"cannot run: {exc}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="radflow-bench-workers-"))
    figures: dict[tuple[str, int, str], float | None] = {}
    run_no = 0
    try:
        for assoc in ASSOCIATIONS:
            for spec in specs(args.quick, assoc):
                ds = ensure_dataset(args.data_dir, spec)
                warm_page_cache(ds.files)
                runs: dict[str, list[float]] = {s.name: [] for s in servers}
                for rep in range(args.repeat):
                    for server in servers:  # interleaved so drift hits them alike
                        run_no += 1
                        run_dir = work / f"run{run_no:03d}-{spec.name}-a{assoc}-{server.name}"
                        try:
                            res = run_once(server, ds, assoc, storescu, run_dir,
                                           args.run_timeout)
                        except ServerNotReady as exc:
                            print(f"  {spec.name} a{assoc} {server.name}: start failed: {exc}")
                            continue
                        finally:
                            clean_dir(run_dir / "out")
                            clean_dir(run_dir / "spool")
                        note = "" if res.valid else f"  NOT COUNTED: {'; '.join(res.warnings)}"
                        print(f"  {spec.name:5} a{assoc} {server.name:14} run {rep + 1}: "
                              f"{res.inst_per_s:8.1f} inst/s{note}", flush=True)
                        if res.valid:
                            runs[server.name].append(res.inst_per_s)
                for name, values in runs.items():
                    figures[(spec.name, assoc, name)] = median_or_none(values)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}x"

    rows = []
    for assoc in ASSOCIATIONS:
        for name in ("ct", "small"):
            one = figures.get((name, assoc, "radflow-pg"))
            two = figures.get((name, assoc, "radflow-pg-w2"))
            peer = figures.get((name, assoc, "storescp"))
            rows.append([name, str(assoc), fmt(one), fmt(two), fmt(peer), ratio(two, one),
                         ratio(two, peer)])
    print()
    print(f"C-STORE intake, storescu x associations -> server on loopback; inst/s, median of "
          f"{args.repeat} run(s); radflow on PostgreSQL")
    print(format_table(["data", "assoc", "1 worker", "2 workers", "storescp", "2w/1w",
                        "2w/storescp"], rows, align="lrrrrrr"))
    if args.json is not None:
        args.json.write_text(json.dumps({f"{k[0]}-a{k[1]}-{k[2]}": v
                                         for k, v in figures.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
