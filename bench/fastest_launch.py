"""The fastest launch choice of a `bench.kernels` sweep, printed as the kernel's config variable takes it.

    python -m bench.fastest_launch kernels.json depthwise_glu_sweep           # -> rows_w8,22,64,4,1
    python -m bench.fastest_launch kernels.json ln_modulate_sweep --both-calls  # -> 1,4

A sweep row's shape is its launch fields joined by "-" (True / False for SiLU inside); the output joins them by ","
with 1 / 0, the form of SANA_WM_GLU_CONFIG and SANA_WM_LN_CONFIG. With --both-calls the shapes carry a call prefix
("attn-1-4", "ffn-1-4") and the launch with the least summed time over the calls wins (the adaLN kernel serves the
attention's and the FFN's input with one launch choice). Rows over their error budget are left out.
"""
from __future__ import annotations

import argparse
import json


def fastest(rows: list[dict], op: str, both_calls: bool = False) -> str:
    total: dict[str, float] = {}
    for r in rows:
        if r["op"] == op and r["ok"]:
            launch = r["shape"].split("-", 1)[1] if both_calls else r["shape"]
            total[launch] = total.get(launch, 0.0) + r["ms"]
    if not total:
        raise SystemExit(f"bench.fastest_launch: no {op} row within its error budget")
    fields = min(total, key=total.get).split("-")
    return ",".join({"True": "1", "False": "0"}.get(f, f) for f in fields)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", help="a bench.kernels --json record")
    p.add_argument("op", help="the sweep's op, e.g. depthwise_glu_sweep")
    p.add_argument("--both-calls", action="store_true", help="sum each launch's time over the call prefixes")
    args = p.parse_args(argv)
    with open(args.json) as f:
        print(fastest(json.load(f)["rows"], args.op, args.both_calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
