"""moto's EC2-compatible server for runner's tests, plus faults moto cannot produce by
itself: RunInstances refused with InsufficientInstanceCapacity for the instance types named
in RUNNER_TEST_NO_CAPACITY (comma-separated), as AWS does when a zone runs out of a type; and
the first RunInstances calls refused with the codes in RUNNER_TEST_REFUSALS (comma-separated,
one call each, in order: VcpuLimitExceeded, RequestLimitExceeded, ...), as a busy account's
quotas and throttling do. With RUNNER_TEST_CALL_LOG set, every EC2 API call is appended to
that file as `<access key id> <Action>`, so a test counts the calls one client made.

Usage: python moto-server.py -H 127.0.0.1 -p PORT
"""

import os
import sys

from moto.core.exceptions import ServiceException
from moto.core.responses import BaseResponse
from moto.ec2.models.instances import InstanceBackend
from moto.server import main

NO_CAPACITY = {t for t in os.environ.get("RUNNER_TEST_NO_CAPACITY", "").split(",") if t}


REFUSALS = [c for c in os.environ.get("RUNNER_TEST_REFUSALS", "").split(",") if c]


class InsufficientInstanceCapacity(ServiceException):
    code = "InsufficientInstanceCapacity"


_run_instances = InstanceBackend.run_instances


def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
    kind = kwargs.get("instance_type")
    if REFUSALS:
        code = REFUSALS.pop(0)
        # moto serializes a ServiceException by its class's `code`, so each code gets a class.
        refusal = type(code, (ServiceException,), {"code": code})
        raise refusal(f"{code} (injected by runner's test server)")
    if kind in NO_CAPACITY:
        raise InsufficientInstanceCapacity(
            f"We currently do not have sufficient {kind} capacity in the Availability Zone you requested."
        )
    return _run_instances(self, image_id, count, user_data, security_group_names, **kwargs)


InstanceBackend.run_instances = run_instances

CALL_LOG = os.environ.get("RUNNER_TEST_CALL_LOG")
_call_action = BaseResponse.call_action


def call_action(self):
    if CALL_LOG:
        with open(CALL_LOG, "a") as log:
            log.write(f"{self.get_access_key()} {self._get_action()}\n")
    return _call_action(self)


BaseResponse.call_action = call_action

if __name__ == "__main__":
    main(sys.argv[1:])
