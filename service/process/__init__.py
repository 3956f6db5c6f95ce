"""Process plumbing: settings (`settings`), CPU sizing (`cpus`), the supervisor of worker
processes (`workers`) and uvicorn's HTTP protocol with a head limit (`http_protocol`).
`python -m service` (service/__main__.py) puts them together."""
