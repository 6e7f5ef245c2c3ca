"""The API's routers, one per concern: jobs, streams (SSE), leaps, health (and Prometheus), pages (dashboard)."""
