"""Run by tests/integration/test_export_label_studio.py with the separate Label Studio SDK venv's
Python (scripts/setup_test_clients.sh): validates a review export's tasks and predictions with
the SDK's own ``LabelInterface`` built from the exported labeling config; prints the errors as JSON.

Usage: python _label_studio_check.py TASKS_JSON CONFIG_XML
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from label_studio_sdk.label_interface import LabelInterface

    with open(sys.argv[1]) as f:
        tasks = json.load(f)
    with open(sys.argv[2]) as f:
        interface = LabelInterface(f.read())
    out = {"tasks": len(tasks), "task_errors": [], "prediction_errors": [], "regions": 0}
    for task in tasks:
        # validate_task() with predictions calls validate_prediction() without its argument (SDK bug):
        # validate the task's data alone, then each prediction.
        if not interface.validate_task({k: v for k, v in task.items() if k != "predictions"}):
            out["task_errors"].append(task["id"])
        for prediction in task["predictions"]:
            out["regions"] += len(prediction["result"])
            errors = interface.validate_prediction(prediction, return_errors=True)
            if errors:
                out["prediction_errors"].append({"task": task["id"], "errors": errors[:5]})
    # The check itself must be able to fail: a region with a label the config does not have.
    bad = json.loads(json.dumps(tasks[0]["predictions"][0]))
    bad["result"][0]["value"][bad["result"][0]["type"]] = ["not-a-label"]
    out["bad_label_rejected"] = not interface.validate_prediction(bad)
    print("LABEL_STUDIO_RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
