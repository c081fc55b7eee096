"""What a person sees: the round report and its sinks (Prometheus metrics, the status page and
dashboard, the terminal panel, progress lines). Sinks read reports; they never drive training."""
