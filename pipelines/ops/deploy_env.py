"""The values `prefect deploy` takes from the environment, checked before anything is deployed
(prefect.yaml runs this in each deployment's build step and templates the schedule and the image
with its output):

    python3 -m pipelines.ops.deploy_env cron    # DEEPLAB_RETRAIN_CRON, or weekly when unset
    python3 -m pipelines.ops.deploy_env image   # DEEPLAB_IMAGE; an error when unset or empty

Standard library only, so any python3 on PATH runs it.
"""

from __future__ import annotations

import os
import sys

CRON_ENV, IMAGE_ENV = "DEEPLAB_RETRAIN_CRON", "DEEPLAB_IMAGE"
DEFAULT_CRON = "0 3 * * 0"  # Sundays 03:00 UTC


class DeployEnvError(ValueError):
    pass


def cron(environ=os.environ) -> str:
    """DEEPLAB_RETRAIN_CRON, or the weekly default when it is unset or empty; five fields."""
    value = (environ.get(CRON_ENV) or "").strip() or DEFAULT_CRON
    if len(value.split()) != 5:
        raise DeployEnvError(f"{CRON_ENV}={value!r} is not a cron expression; expected five "
                             f"fields, e.g. {DEFAULT_CRON!r} (or unset it for that default)")
    return value


def image(environ=os.environ) -> str:
    """DEEPLAB_IMAGE: the image the docker deployment runs; required, never empty."""
    value = (environ.get(IMAGE_ENV) or "").strip()
    if not value:
        raise DeployEnvError(f"{IMAGE_ENV} is unset or empty; expected the image that holds "
                             "the project's virtualenv, e.g. DEEPLAB_IMAGE=registry.example/"
                             "deeplab:gpu, for the retrain-gpu-docker deployment")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    what = {"cron": cron, "image": image}
    if len(argv) != 1 or argv[0] not in what:
        print(f"usage: python3 -m pipelines.ops.deploy_env {{{'|'.join(what)}}}",
              file=sys.stderr)
        return 2
    try:
        print(what[argv[0]]())
    except DeployEnvError as err:
        print(f"ERROR [deploy]: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
