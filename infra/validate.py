"""Every offline check of what `make package` builds, in one process (`make validate`).

The template (cfn-lint before and after the SAM transform, ``infra.check_template``), then every
state machine (``infra.validate_statemachines``). One interpreter loads cfn-lint once for all of
them, which is most of what they cost.

    python -m infra.validate        # exit 1 on any problem
"""

from __future__ import annotations

import sys

from infra import check_template, validate_statemachines


def main() -> int:
    return max(check_template.main(), validate_statemachines.main())


if __name__ == "__main__":
    sys.exit(main())
