"""Side-by-side benchmarks of plmkit against reference libraries; `python -m bench.run --list`."""
