"""`swarmtrain config show`: each effective node setting and where it came from (default, --config
file, SWARMTRAIN_* environment or flag), and with --run a run file's settings."""

from __future__ import annotations

import json

from node.config import NodeConfig, as_dict, describe, load_run_config


def run_config_show(cfg: NodeConfig, sources: dict[str, str], run_path: str | None, *, as_json: bool) -> int:
    rows = [{"name": n, "value": v, "source": sources[n], "doc": d} for n, v, d in describe(cfg)]
    if as_json:
        out = {"node": rows}
        if run_path:
            out["run"] = as_dict(load_run_config(run_path))
        print(json.dumps(out, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {json.dumps(r['value']):<28} {r['source']}")
    if run_path:
        print(f"\nrun settings from {run_path}:")
        for section, values in as_dict(load_run_config(run_path)).items():
            print(f"  {section} = {json.dumps(values)}")
    return 0
