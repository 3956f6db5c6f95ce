"""Other serving stacks over the same models, for `make bench` to measure beside the service.

`bentoml_service.py` runs inside BentoML's own environment (.venv-bentoml/, made by
`bentoml_env.py` from `requirements-bentoml.txt`); `compare.py` drives it from the project's
environment. Nothing here imports anything heavy at package level: BentoML's interpreter
imports this package too.
"""
