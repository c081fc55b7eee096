"""The node's HTTP endpoint: `/` (live page), `/api/status` (JSON), `/metrics` (Prometheus)."""
