"""The long fuzz run as a benchmark: `python3 -m guest.bench.fuzz --seconds 60 --seed 1`.

* `bench`: the testbed (a stack under attack with live connections, its honest peer, an
  attacker), the fuzz loop, the checks during and after it, and the report (`run_fuzz`);
* `__main__`: the command line (`main`) and the report's table.

The frames themselves come from `guest.testing.fuzz_frames`, which tests share.
"""
