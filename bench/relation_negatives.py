"""LEMoE with and without negative templates (other relations of each edit's subject, which the expert learns to
leave alone), at the routing layer and at layer 11, on a dev stream: KnowEdit ZsRE's records beyond the first
1,000 (which the tables edit).

    .venv/bin/python -m bench.relation_negatives

Each variant is hparams/LEMoE/smollm2-135m.yaml in the stream's order with the fields in VARIANTS; one
`edit-plugins compare` (run folders resumed), scored at the end with 50 probes and 50 unrelated questions.
Writes bench/results/relation_negatives.json (the table's rows).
"""
import json
import subprocess
import sys

import yaml

from bench.common import ROOT, SHARED, setup, write_result
from bench.relation_gate import CALIBRATION
from bench.relation_separation import FIRST_RECORD

OUT = ROOT / "runs" / "bench-relation-negatives"
# the calibration relations of bench.relation_gate, in both forms the data asks in; never the records' own
NEGATIVES = [f"The {r} of {{}} is" for r in CALIBRATION] + [f"What is the {r} of {{}}?" for r in CALIBRATION]
VARIANTS = {
    "lemoe": {},
    "lemoe-negatives": {"negative_templates": NEGATIVES},
    "lemoe-layer11": {"layer": 11},
    "lemoe-negatives-layer11": {"layer": 11, "negative_templates": NEGATIVES},
}


def main():
    from edit_plugins.lifelong.compare import rows

    data = OUT / "dev_zsre.json"
    (OUT / "hparams").mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(json.loads((SHARED / "knowedit_zsre.json").read_text())[FIRST_RECORD:]))
    base = yaml.safe_load((ROOT / "hparams" / "LEMoE" / "smollm2-135m.yaml").read_text())
    command = [sys.executable, "-m", "edit_plugins.cli", "compare", "--data", str(data), "--out", str(OUT / "runs"),
               "--probe-data", str(SHARED / "known_1000.json"), "--num-probes", "50",
               "--unrelated-data", str(SHARED / "zsre_mend_eval.json"), "--num-unrelated", "50",
               "--checkpoints", str(len(json.loads(data.read_text())))]
    for name, fields in VARIANTS.items():
        path = OUT / "hparams" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, "order_planning": False, **fields}, sort_keys=False))
        command += ["--hparams", str(path)]
    subprocess.run(command, check=True, cwd=ROOT)
    result = rows([OUT / "runs" / name for name in VARIANTS])
    write_result("relation_negatives", {"first_record": FIRST_RECORD, "variants": VARIANTS, "rows": result},
                 echo=False)


if __name__ == "__main__":
    setup(2)
    main()
