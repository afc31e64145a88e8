"""The fleet: simulated phones and a real aggregation server, run together on one machine.

A top-level package because it is neither the device nor the server: it drives both. It
starts the server as a child process (`server_process`, also used by the tests and the
benchmarks), talks to its admin API (`admin`), runs each simulated phone through the real
device runtime of `keyboard_app` in a pool of workers (`devices`), picks who takes part
(`population`), loops over rounds (`run`), evaluates and plots the global model
(`evaluation`, `plots`), and summarises a run (`report`). `python -m fleet.simulate` is the
command line; `python -m fleet.demo` (`make demo`) is the end-to-end demo. `keyboard_app`
and `aggregation_server` never import it (pyproject.toml's import rules).
"""


class FleetError(RuntimeError):
    """The simulation cannot go on (server refused, did not start, stalled...)."""
