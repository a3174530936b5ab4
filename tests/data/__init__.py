"""A package, so its test modules are `data.test_*` and may share a basename with another folder's tests
(tests/evaluation/test_tasks.py beside tests/data/test_tasks.py) without pytest refusing to collect."""
