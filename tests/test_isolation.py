"""The suite never writes outside its temporary directories (see ``isolated_runtime``)."""

from __future__ import annotations

import os
from pathlib import Path

from redsg_edge.service import status_path


def test_default_status_path_is_the_session_temp_dir(isolated_runtime):
    # A daemon started by any test without service.status_file writes here, not to the user's
    # /run/redsg-edge, $XDG_RUNTIME_DIR or /tmp/redsg-edge-<uid>; the session fixture's teardown
    # then checks that those files did not change.
    assert status_path(None) == isolated_runtime / "status.json"
    assert Path(os.environ["RUNTIME_DIRECTORY"]) == isolated_runtime
    assert "NOTIFY_SOCKET" not in os.environ
